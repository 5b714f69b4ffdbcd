package execmem

// Reach is how far (in either direction) the near jump reaches: B imm26.
const Reach = 1 << 27
