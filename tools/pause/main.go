// Command pause is the e2e node's sandbox ("pause") container: it holds a pod's
// namespaces open until the runtime stops it. No registry can serve the upstream pause
// image here, so the harness packs this program into an OCI image of its own.
//
// It does what the upstream pause does: exit cleanly on SIGINT or SIGTERM, and, being
// PID 1 of the pod when the pod shares its process namespace, reap every orphaned child
// so that no zombie is left behind.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reapChildren()
	}
}

// reapChildren waits for every child that has exited, without blocking on live ones.
func reapChildren() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
