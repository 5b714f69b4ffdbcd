//go:build linux

package patch

// SelfHelperPid returns the PID of the running self-patch helper (0: none).
func SelfHelperPid() int {
	self.mu.Lock()
	defer self.mu.Unlock()
	if self.h == nil {
		return 0
	}
	return self.h.pid
}

// StopSelfHelper ends the helper, if any (the next request starts one).
func StopSelfHelper() {
	self.mu.Lock()
	defer self.mu.Unlock()
	if self.h != nil {
		self.h.conn.Close()
		<-self.h.done
		self.h = nil
	}
}

// DonatePadding maps the donated page now (the helper's start does it).
func DonatePadding() { donatePadding() }
