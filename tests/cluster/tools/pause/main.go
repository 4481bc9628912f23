// Command pause is the test bed's sandbox ("pause") image and the init process of the
// bed's PID namespace: it does nothing but reap orphaned children until SIGTERM or SIGINT,
// like Kubernetes' own pause container (build/pause/linux/pause.c). No registry is
// reachable from the test bed, so containerd's sandbox_image is built from this.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	child := make(chan os.Signal, 16)
	signal.Notify(child, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-child:
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
