#!/bin/sh
# The guest's init (package vm): mount the basics, load the kernel modules
# in the order the host resolved, bring up user-mode networking (the host's
# loopback is 10.0.2.2), run the test's start script, then serve the host's
# requests on the second serial port until told to power off.
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t tmpfs -o mode=0755,nosuid,nodev run /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmp /tmp
mkdir -p /run/cryptsetup /run/lock
while read -r m; do
	insmod "/lib/modules/$m" || echo "vm-init: insmod $m failed"
done </lib/modules/order
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
echo "nameserver 10.0.2.3" >/etc/resolv.conf
if [ -x /etc/vmtest/start ]; then
	/etc/vmtest/start || echo "vm-init: start script failed: $?"
fi
vmguest agent /dev/ttyS1
echo "vm-init: agent exited ($?), powering off"
poweroff -f
