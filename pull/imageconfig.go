package pull

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	ispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/guest-puller/guest-puller/internal/untrusted"
)

// An image configuration is the registry's to write wherever no signature
// pins the manifest (insecureAcceptAnything, `encrypted` alone), and JSON's
// small values grow when decoded: an empty history entry is 3 bytes of
// JSON and 64 in memory, a diff_id 3 and 16, and an environment variable
// costs quadratic time in umoci's conversion, which compares it with every
// one before it. So a pull keeps only what a bundle is made of, and each
// list of it is refused at its first entry past maxConfigEntries, far
// above any image's (a few dozen variables, labels, ports, volumes; a
// kernel's overlay takes some 500 layers). internal/registry reads at most
// 4 MiB of config.
const maxConfigEntries = 4096

// imageConfig is the part of an image configuration a pull keeps: all of
// it but the history, which no bundle needs, with every list bounded. Its
// fields shadow Image's of the same JSON names.
type imageConfig struct {
	ispec.Image
	History skipped `json:"history,omitempty"`
	RootFS  struct {
		Type    string                     `json:"type"`
		DiffIDs boundedList[digest.Digest] `json:"diff_ids"`
	} `json:"rootfs"`
	Config struct {
		ispec.ImageConfig
		ExposedPorts boundedMap[struct{}] `json:"ExposedPorts,omitempty"`
		Env          boundedList[string]  `json:"Env,omitempty"`
		Entrypoint   boundedList[string]  `json:"Entrypoint,omitempty"`
		Cmd          boundedList[string]  `json:"Cmd,omitempty"`
		Volumes      boundedMap[struct{}] `json:"Volumes,omitempty"`
		Labels       boundedMap[string]   `json:"Labels,omitempty"`
	} `json:"config,omitempty"`
}

// parseConfig decodes an image configuration for the bundle.
func parseConfig(image string, raw []byte) (ispec.Image, error) {
	var c imageConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		var tooMany errTooMany
		if errors.As(err, &tooMany) {
			return ispec.Image{}, fmt.Errorf("%s: image config: %w", image, err)
		}
		return ispec.Image{}, fmt.Errorf("%s: image config: %w", image, untrusted.Error(err))
	}
	img := c.Image
	img.History = nil
	img.RootFS = ispec.RootFS{Type: c.RootFS.Type, DiffIDs: c.RootFS.DiffIDs}
	img.Config = c.Config.ImageConfig
	img.Config.ExposedPorts = c.Config.ExposedPorts
	img.Config.Env = c.Config.Env
	img.Config.Entrypoint = c.Config.Entrypoint
	img.Config.Cmd = c.Config.Cmd
	img.Config.Volumes = c.Config.Volumes
	img.Config.Labels = c.Config.Labels
	return img, nil
}

// skipped is a JSON value read over and dropped.
type skipped struct{}

func (*skipped) UnmarshalJSON([]byte) error { return nil }

// errTooMany is a list of the config longer than maxConfigEntries.
type errTooMany struct{}

func (errTooMany) Error() string {
	return fmt.Sprintf("a list or map holds more than %d entries", maxConfigEntries)
}

// boundedList is a JSON array (or null) of at most maxConfigEntries values.
type boundedList[T any] []T

func (l *boundedList[T]) UnmarshalJSON(b []byte) error {
	dec, err := open(b, '[')
	if dec == nil {
		return err
	}
	for dec.More() {
		if len(*l) == maxConfigEntries {
			return errTooMany{}
		}
		var v T
		if err := dec.Decode(&v); err != nil {
			return err
		}
		*l = append(*l, v)
	}
	return nil
}

// boundedMap is a JSON object (or null) of at most maxConfigEntries
// members.
type boundedMap[V any] map[string]V

func (m *boundedMap[V]) UnmarshalJSON(b []byte) error {
	dec, err := open(b, '{')
	if dec == nil {
		return err
	}
	*m = boundedMap[V]{}
	for dec.More() {
		if len(*m) == maxConfigEntries {
			return errTooMany{}
		}
		k, err := dec.Token()
		if err != nil {
			return err
		}
		var v V
		if err := dec.Decode(&v); err != nil {
			return err
		}
		(*m)[k.(string)] = v
	}
	return nil
}

// open starts decoding the JSON value b, which json.Unmarshal has already
// found well-formed, as a list or object opened by delim: a nil decoder is
// null (and a nil error) or another kind of value.
func open(b []byte, delim json.Delim) (*json.Decoder, error) {
	if string(b) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != delim {
		return nil, fmt.Errorf("want a JSON %s", map[json.Delim]string{'[': "array", '{': "object"}[delim])
	}
	return dec, nil
}
