package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/guest-puller/guest-puller/internal/errdefs"
	"github.com/guest-puller/guest-puller/internal/jsonerr"
)

// Version is guest-puller's version: "dev" unless the build sets it
// (-ldflags "-X github.com/guest-puller/guest-puller/internal/config.Version=v1.2.3").
var Version = "dev"

// Config is every setting of a pull, as the command line's flags and the
// config file name them (docs/cli.md). The daemon uses it as its defaults.
type Config struct {
	Policy                 string   `json:"policy"`
	Cache                  string   `json:"cache,omitempty"`
	CacheDevice            string   `json:"cache-device,omitempty"`
	CacheDeviceKey         string   `json:"cache-device-key,omitempty"`
	AuthFile               string   `json:"auth-file,omitempty"`
	Creds                  string   `json:"creds,omitempty"`
	DecryptionKeys         []string `json:"decryption-key,omitempty"`
	KeyDir                 string   `json:"key-dir,omitempty"`
	KidResourceTypes       []string `json:"kid-resource-type,omitempty"`
	KBS                    string   `json:"kbs,omitempty"`
	KBSCert                string   `json:"kbs-cert,omitempty"`
	Attester               string   `json:"attester,omitempty"`
	TPM                    string   `json:"tpm,omitempty"`
	MaxConcurrentDownloads int      `json:"max-concurrent-downloads,omitempty"`
	InsecureRegistries     []string `json:"insecure-registry,omitempty"`
	RegistriesConf         string   `json:"registries-conf,omitempty"`
	RegistriesD            string   `json:"registries-d,omitempty"`
	Platform               string   `json:"platform,omitempty"`
	// IdleTimeout: a registry or KBS that sends nothing for this long,
	// for an answer or mid-body, fails the request, which is retried (a
	// blob resumed); 0 means idleread.DefaultTimeout.
	IdleTimeout Duration `json:"idle-timeout,omitempty"`
}

// Duration is a time.Duration that a config file writes as Go writes
// durations ("30s", "1m30s") and the command line takes as a flag value.
type Duration time.Duration

// String implements flag.Value.
func (d *Duration) String() string { return time.Duration(*d).String() }

// Set implements flag.Value: a positive duration.
func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v <= 0 {
		return fmt.Errorf("%s is not a positive duration", s)
	}
	*d = Duration(v)
	return nil
}

// UnmarshalJSON reads "30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"30s\": %w", err)
	}
	return d.Set(s)
}

// MarshalJSON writes "30s".
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// DefaultRegistriesD is read for lookaside and attachment settings when
// Config.RegistriesD is empty and the directory exists.
const DefaultRegistriesD = "/etc/containers/registries.d"

// LoadConfig reads a JSON config file strictly: an unknown setting is an
// error (an *UnknownSettingError), never ignored, and a syntax error names
// its line and column.
func LoadConfig(path string) (Config, error) {
	var c Config
	data, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config %s: %w: %w", path, errdefs.ErrInvalidConfig, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		// encoding/json has no typed error for an unknown field.
		if key, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			if k, err := strconv.Unquote(key); err == nil {
				return c, &UnknownSettingError{File: path, Key: k}
			}
		}
		return c, fmt.Errorf("config %s: %w: %v", path, errdefs.ErrInvalidConfig, jsonerr.Describe(data, err))
	}
	if dec.More() {
		line, col := jsonerr.Position(data, dec.InputOffset())
		return c, fmt.Errorf("config %s: %w: line %d, column %d: data after the JSON object", path, errdefs.ErrInvalidConfig, line, col)
	}
	return c, nil
}

// UnknownSettingError is a config file key that names no setting.
type UnknownSettingError struct {
	File, Key string
}

func (e *UnknownSettingError) Error() string {
	return fmt.Sprintf("config %s: %v: unknown setting %q", e.File, errdefs.ErrInvalidConfig, e.Key)
}

// Unwrap makes it a configuration error (exit 2).
func (e *UnknownSettingError) Unwrap() error { return errdefs.ErrInvalidConfig }
