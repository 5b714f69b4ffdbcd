package execmem

// Reach is how far (in either direction) the near jump reaches: a rel32.
const Reach = 1 << 31
