// Package vm runs guest-puller where it is meant to run: inside a Linux
// guest with its own TPM. It boots Debian's kernel (the linux-image-amd64
// .deb that scripts/setup unpacks with dpkg-deb -x, never installs) under
// QEMU with a busybox initramfs built here, swtpm as the guest's tpm-tis
// TPM, an optional virtio-blk disk file and user networking, in which the
// host's loopback services are at 10.0.2.2.
//
// The guest's init (init.sh) loads the kernel modules, brings up the
// network, runs the test's own start script, and hands a second serial
// port to vmguest, a small agent that runs one command per request: the
// host writes a JSON line, the guest answers with one (Machine.Run), so a
// test reads results, never scrapes a console. The first serial port is
// the kernel's console, kept in a file for a failing test's log.
//
// Everything a Machine starts (swtpm, QEMU) is killed by its pid when the
// test ends, whatever way it ends; the host side mounts nothing and uses
// no loop device.
package vm
