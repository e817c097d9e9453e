// Package securemount puts a filesystem on a block device the host
// provides, sealed so that the host sees only ciphertext and a block it
// changes reads back as an I/O error, never as content: LUKS2 with
// dm-integrity (AES-XTS-512 with HMAC-SHA256 per 4 KiB sector, made and
// opened by cryptsetup), ext4 on top. It serves the sealed layer store
// (guest-puller --cache-device) and the confidential-data-hub's
// SecureMountService for kata's trusted image storage, with one code path.
//
// # Keys
//
// The key unlocks the LUKS2 keyslot and is passed to cryptsetup on a pipe,
// never in a file; once the device is open the kernel holds the volume
// key, and this package clears its copy. A store with a fresh key from
// crypto/rand lives as long as the guest's memory does; one whose key comes
// from a KBS can be opened again after a restart. The key is 256 bits of
// entropy, so the keyslot uses PBKDF2 at its minimum cost instead of
// Argon2's seconds of memory-hard work, which protect passphrases.
//
// # Formatting without wiping
//
// dm-integrity stores a tag per sector; a sector never written has none
// and reads back as an I/O error. cryptsetup's default answer is to write
// the whole device once (--integrity-no-wipe skips it), which costs a
// full device write: minutes for a few GiB under emulation. Instead,
// format writes only what mke2fs and ext4 will read before writing: the
// first and last MiB (signature probes, the primary superblock's block,
// which mke2fs reads to rewrite part of it), and has mke2fs write every
// inode table and the whole journal itself (lazy_itable_init=0,
// lazy_journal_init=0) and keep no backup superblocks (sparse_super2 with
// num_backup_sb=0: mke2fs would read-modify-write their blocks). ext4 then
// writes every data block before it reads it. The cost is mke2fs writing
// the inode tables and the journal, about 3% of the device, instead of
// 100%; the price is a filesystem without backup superblocks, which for a
// store whose every block is authenticated buys nothing anyway: a block
// the host changed reads as an error either way.
//
// dm-integrity's own journal is off (--integrity-no-journal): it would
// write every block twice. A crash can then leave a sector whose data and
// tag disagree, which reads as an I/O error like tampering, and a layer
// that fails to read is fetched again.
package securemount
