// Package faultfs gives tests storage that fails the way a sealed store
// does when the host changes its blocks: with EIO from the kernel, on the
// host, without device-mapper (which only the VM guest has).
//
//   - MountEIO mounts, at a directory, a FUSE filesystem whose every
//     request fails with EIO: a directory, or a layer's content, that no
//     longer reads back.
//   - NewDisk puts an ext4 filesystem on a loop device at a directory;
//     Disk.FailNewBlocks then cuts the device short below its first free
//     block, so everything already written reads back, and the first write
//     of anything new (a file's data, at fsync) fails with EIO.
//
// Both need root; each undoes itself (unmount, detach) at the test's end,
// also when the mount has moved with a renamed parent directory.
package faultfs
