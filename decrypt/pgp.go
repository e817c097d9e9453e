package decrypt

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/ProtonMail/go-crypto/openpgp"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
)

// The OpenPGP recipient is ours rather than ocicrypt's keywrap/pgp, whose
// UnwrapKey
//   - reads the message body with io.ReadAll: a 2.7 MB packet inflates to
//     2 GiB in memory, and compressed packets nested inside each other
//     make it unbounded;
//   - answers the library's passphrase prompt for symmetrically encrypted
//     session keys with the key's password, so a packet can name an Argon2
//     S2K of the author's choosing (up to 2 TiB of memory);
//   - returns the content of a message that is not encrypted at all, so a
//     plain literal packet "unwraps" with any OpenPGP key loaded, to a
//     layer key the image's author chose.
// It reads the same packets (what skopeo and ocicrypt write).

// pgpKeys are the keyring's OpenPGP secret keys, decrypted with their
// passwords when the keyring is made.
func pgpKeys(rings, passwords [][]byte) (openpgp.EntityList, error) {
	var keys openpgp.EntityList
	for i, ring := range rings {
		el, err := openpgp.ReadKeyRing(bytes.NewReader(ring))
		if err != nil {
			return nil, err
		}
		for _, e := range el {
			pks := []*packet.PrivateKey{e.PrivateKey}
			for _, sk := range e.Subkeys {
				pks = append(pks, sk.PrivateKey)
			}
			for _, pk := range pks {
				if pk == nil || !pk.Encrypted {
					continue
				}
				if err := pk.Decrypt(passwords[i]); err != nil {
					return nil, errors.New("wrong password for the OpenPGP key")
				}
			}
		}
		keys = append(keys, el...)
	}
	return keys, nil
}

// errNotRecipient is a packet none of the keyring's keys can open: with
// several keys and recipients, expected, and not worth reporting.
var errNotRecipient = errors.New("not a recipient")

// unwrapPGP opens an OpenPGP message encrypted to one of keys and returns
// its content. Each compressed packet may inflate to 2*maxKeyOptions (the
// literal packet's header included), the content to maxKeyOptions.
func unwrapPGP(keys openpgp.EntityList, msg []byte) ([]byte, error) {
	limit := int64(2 * maxKeyOptions)
	cfg := &packet.Config{MaxDecompressedMessageSize: &limit}
	// No prompt: the secret keys are decrypted already, and a passphrase
	// is never offered for a symmetrically encrypted session key.
	md, err := openpgp.ReadMessage(bytes.NewReader(msg), keys, nil, cfg)
	switch {
	case errors.Is(err, pgperrors.ErrDecryptSessionKeyParsing):
		// The session key opened with one of our keys; what it
		// decrypts does not parse, or inflates past the bound (the
		// library does not say which, against oracles).
		return nil, fmt.Errorf("%w: the message is for a key of the keyring, but its content is malformed or inflates to more than %d bytes", errBound, limit)
	case err != nil:
		return nil, errNotRecipient
	}
	if !md.IsEncrypted || md.DecryptedWith.Entity == nil {
		return nil, errors.New("the message is not encrypted to a key of the keyring")
	}
	opts, err := io.ReadAll(io.LimitReader(md.UnverifiedBody, maxKeyOptions+1))
	switch {
	case errors.Is(err, pgperrors.ErrMessageTooLarge):
		return nil, fmt.Errorf("%w: the message inflates to more than %d bytes", errBound, limit)
	case err != nil:
		// Reading to EOF checked the integrity tag (MDC or AEAD).
		return nil, fmt.Errorf("the message does not decrypt: %v", err)
	case len(opts) > maxKeyOptions:
		return nil, fmt.Errorf("%w: the message holds more than %d bytes", errBound, maxKeyOptions)
	}
	return opts, nil
}
