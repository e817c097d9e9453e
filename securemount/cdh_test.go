package securemount

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/errdefs"
)

// TestServeCDHRefuses checks that untrusted SecureMount options are
// refused before anything is formatted or mounted. (The VM test in
// tests/vm serves a good request on a real disk.)
func TestServeCDHRefuses(t *testing.T) {
	good := map[string]string{"devicePath": "/dev/null", "sourceType": "empty", "targetType": "fileSystem",
		"encryptionType": "luks2", "dataIntegrity": "true", "filesystemType": "ext4"}
	with := func(k, v string) map[string]string {
		o := maps.Clone(good)
		if v == "" {
			delete(o, k)
		} else {
			o[k] = v
		}
		return o
	}
	noKey := func(context.Context, string) ([]byte, error) {
		t.Error("a refused request fetched its key")
		return nil, errors.New("no")
	}
	for _, tc := range []struct {
		name string
		req  CDHRequest
		want string
	}{
		{"volume type", CDHRequest{VolumeType: "aliyun-oss", Options: good, MountPoint: "/run/kata-containers/x"}, "volume_type"},
		{"flags", CDHRequest{VolumeType: "block-device", Options: good, Flags: []string{"ro"}, MountPoint: "/run/kata-containers/x"}, "flags"},
		{"unknown option", CDHRequest{VolumeType: "block-device", Options: with("mountOptions", "exec"), MountPoint: "/run/kata-containers/x"}, `option "mountOptions"`},
		{"mkfs option", CDHRequest{VolumeType: "block-device", Options: with("mkfsOpts", "-E root_owner=0:0"), MountPoint: "/run/kata-containers/x"}, "mkfsOpts"},
		{"mkfs options for a device", CDHRequest{VolumeType: "block-device", Options: map[string]string{"devicePath": "/dev/null", "sourceType": "empty",
			"targetType": "device", "encryptionType": "luks2", "mkfsOpts": "-m 0"}, MountPoint: "/run/kata-containers/x"}, `targetType "device"`},
		{"encryption", CDHRequest{VolumeType: "block-device", Options: with("encryptionType", "zfs"), MountPoint: "/run/kata-containers/x"}, "encryptionType"},
		{"integrity value", CDHRequest{VolumeType: "block-device", Options: with("dataIntegrity", "yes"), MountPoint: "/run/kata-containers/x"}, "dataIntegrity"},
		{"source type", CDHRequest{VolumeType: "block-device", Options: with("sourceType", "plain"), MountPoint: "/run/kata-containers/x"}, "sourceType"},
		{"filesystem", CDHRequest{VolumeType: "block-device", Options: with("filesystemType", "xfs"), MountPoint: "/run/kata-containers/x"}, "filesystemType"},
		{"mount point outside", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/etc"}, "mount_point"},
		{"mount point climbing", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/run/kata-containers/../../etc"}, "mount_point"},
		{"mount point relative", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "run/kata-containers/x"}, "mount_point"},
		{"mount point the root itself", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/run/kata-containers"}, "mount_point"},
		{"mount point the root with a slash", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/run/kata-containers/"}, "mount_point"},
		{"mount point two slashes", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/run/kata-containers/x//"}, "mount_point"},
		{"no device", CDHRequest{VolumeType: "block-device", Options: with("devicePath", ""), MountPoint: "/run/kata-containers/x"}, "neither deviceId nor devicePath"},
		{"device outside /dev", CDHRequest{VolumeType: "block-device", Options: with("devicePath", "/tmp/disk.img"), MountPoint: "/run/kata-containers/x"}, "not below /dev"},
		{"not a block device", CDHRequest{VolumeType: "block-device", Options: good, MountPoint: "/run/kata-containers/x"}, "not a block device"},
		{"device id", CDHRequest{VolumeType: "block-device", Options: with("deviceId", "7:0:1"), MountPoint: "/run/kata-containers/x"}, "deviceId"},
		{"mapper name", CDHRequest{VolumeType: "block-device", Options: with("mapperName", "../control"), MountPoint: "/run/kata-containers/x"}, "mapperName"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ServeCDH(context.Background(), tc.req, noKey)
			if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ServeCDH: %v, want a configuration error about %s", err, tc.want)
			}
		})
	}
}

// TestServeCDHKataAgent checks that kata-agent's own requests pass every
// check before the device's: its trusted image storage (rpc.rs
// cdh_handler_trusted_storage: the work_dir with a trailing slash,
// deviceId, mkfsOpts) and its encrypted block emptyDir (block_handler.rs).
func TestServeCDHKataAgent(t *testing.T) {
	kata := func(mp, mkfsOpts string) CDHRequest {
		return CDHRequest{VolumeType: "block-device", MountPoint: mp, Options: map[string]string{
			"deviceId": "7:255", "sourceType": "empty", "targetType": "fileSystem", "filesystemType": "ext4",
			"mkfsOpts": mkfsOpts, "encryptionType": "luks2", "dataIntegrity": "true"}}
	}
	for _, req := range []CDHRequest{
		kata("/run/kata-containers/image/", "-E lazy_journal_init"),
		kata("/run/kata-containers/sandbox/storage/vol", "-O ^has_journal -m 0 -i 163840 -I 128"),
	} {
		_, err := ServeCDH(context.Background(), req, nil)
		// 7:255 is no device here: every option was taken.
		if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), "no block device 7:255") {
			t.Errorf("kata-agent's SecureMount at %s: %v, want it refused only for its device", req.MountPoint, err)
		}
	}
}

func TestParseMkfsOpts(t *testing.T) {
	zero, pct := 0, 5
	for _, tc := range []struct {
		in   string
		want Ext4Options
		args []string
		err  string
	}{
		{in: ""},
		{in: "-E lazy_journal_init"},
		{in: "-E lazy_journal_init=1,lazy_itable_init=0"},
		{in: "-O ^has_journal -m 0 -i 163840 -I 128", want: Ext4Options{NoJournal: true, ReservedPercent: &zero, BytesPerInode: 163840, InodeSize: 128},
			args: []string{"-m", "0", "-i", "163840", "-I", "128"}},
		{in: "-m 5 -U 0f5d4e6c-5d9e-4a0b-9d8c-1b2a3c4d5e6f", want: Ext4Options{ReservedPercent: &pct, UUID: "0f5d4e6c-5d9e-4a0b-9d8c-1b2a3c4d5e6f"},
			args: []string{"-m", "5", "-U", "0f5d4e6c-5d9e-4a0b-9d8c-1b2a3c4d5e6f"}},
		{in: "-E root_owner=0:0", err: "-E root_owner"},
		{in: "-E lazy_journal_init=2", err: "lazy_journal_init=2"},
		{in: "-O ^has_journal,^metadata_csum", err: "^metadata_csum"},
		{in: "-O sparse_super", err: "sparse_super"},
		{in: "-m 90", err: "-m"},
		{in: "-i 12", err: "-i"},
		{in: "-I 200", err: "power of two"},
		{in: "-U random", err: "UUID"},
		{in: "-d /etc", err: "-d"},
		{in: "-T huge", err: "-T"},
		{in: "-m", err: "pairs"},
		{in: "-m0", err: "pairs"},
	} {
		got, err := parseMkfsOpts(tc.in)
		if tc.err != "" {
			if !errors.Is(err, errdefs.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseMkfsOpts(%q): %v, want a configuration error about %s", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseMkfsOpts(%q): %v", tc.in, err)
			continue
		}
		features, args := got.args()
		if got.NoJournal != tc.want.NoJournal || (features == "") == tc.want.NoJournal || !slices.Equal(args, tc.args) {
			t.Errorf("parseMkfsOpts(%q): features %q, args %q; want no journal %v, args %q", tc.in, features, args, tc.want.NoJournal, tc.args)
		}
	}
}

// FuzzParseMkfsOpts holds parseMkfsOpts, a parser of what a SecureMount
// request says, to never letting through a mke2fs argument outside the few
// it takes, whatever the input.
func FuzzParseMkfsOpts(f *testing.F) {
	for _, s := range []string{"", "-E lazy_journal_init", "-O ^has_journal -m 0 -i 163840 -I 128",
		"-U 0f5d4e6c-5d9e-4a0b-9d8c-1b2a3c4d5e6f", "-E root_owner=0:0", "-d /etc", "-O ^has_journal,^has_journal"} {
		f.Add(s)
	}
	allowed := map[string]bool{"-m": true, "-i": true, "-I": true, "-U": true}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := parseMkfsOpts(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidConfig) {
				t.Fatalf("parseMkfsOpts(%q): %v, not a configuration error", s, err)
			}
			return
		}
		features, args := o.args()
		if features != "" && features != ",^has_journal" {
			t.Fatalf("parseMkfsOpts(%q): features %q", s, features)
		}
		if len(args)%2 != 0 {
			t.Fatalf("parseMkfsOpts(%q): args %q", s, args)
		}
		for i := 0; i < len(args); i += 2 {
			if !allowed[args[i]] || strings.HasPrefix(args[i+1], "-") || strings.ContainsAny(args[i+1], " \t\n,=") {
				t.Fatalf("parseMkfsOpts(%q): mke2fs argument %q %q", s, args[i], args[i+1])
			}
		}
	})
}
