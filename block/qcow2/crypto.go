package qcow2

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// The legacy qcow2 AES encryption (crypt_method 1): AES-128 in CBC mode
// over each 512-byte sector, with the sector number of the guest offset as
// a little-endian IV ("plain64") and the passphrase's first 16 bytes,
// zero-padded, as the key. qimg reads such images; writing them is refused,
// as QEMU's system emulators refuse them, because the scheme is unsafe.
// LUKS encryption (crypt_method 2) comes with the LUKS driver.

// aesSectorSize is the unit of AES encryption.
const aesSectorSize = 512

// errAESWrite refuses writes to AES-encrypted images.
var errAESWrite = fmt.Errorf("AES-encrypted qcow2 images are not supported for writing; convert the image to an unencrypted or LUKS-encrypted one with 'qemu-img convert': %w", block.ErrUnsupported)

// setUpAES derives the AES key from the secret the encrypt.key-secret
// option names, unless the image is opened only for its metadata.
func (i *Image) setUpAES(o *block.DriverOptions) error {
	if o.NoIO {
		return nil
	}
	id := ""
	if o.Options != nil {
		id = o.Options.String(optEncryptKeySecret)
	}
	if id == "" {
		return errors.New("Parameter 'encrypt.key-secret' is required for cipher")
	}
	var secret []byte
	ok := false
	if o.Env != nil {
		secret, ok = o.Env.Secrets[id]
	}
	if !ok {
		return fmt.Errorf("No secret with id '%s'", id)
	}
	if !utf8.Valid(secret) {
		return fmt.Errorf("Data from secret %s is not valid UTF-8", id)
	}
	for k, c := range secret {
		if c == 0 {
			secret = secret[:k]
			break
		}
	}
	var key [16]byte
	copy(key[:], secret)
	c, err := aes.NewCipher(key[:])
	if err != nil {
		return err
	}
	i.aes = c
	return nil
}

// decryptAES decrypts p in place; off is the guest offset of p[0], a
// multiple of the sector size, and len(p) a multiple of it too.
func (i *Image) decryptAES(p []byte, off int64) {
	var iv [aes.BlockSize]byte
	for len(p) > 0 {
		binary.LittleEndian.PutUint64(iv[:], uint64(off/aesSectorSize))
		cipher.NewCBCDecrypter(i.aes, iv[:]).CryptBlocks(p[:aesSectorSize], p[:aesSectorSize])
		p = p[aesSectorSize:]
		off += aesSectorSize
	}
}

// readEncrypted reads and decrypts guest data stored at host offset host:
// whole sectors are read around the wanted bytes.
func (i *Image) readEncrypted(p []byte, off int64, host int64) error {
	head := off & (aesSectorSize - 1)
	n := (head + int64(len(p)) + aesSectorSize - 1) &^ (aesSectorSize - 1)
	buf := make([]byte, n)
	if err := storage.ReadFull(i.data, buf, host-head); err != nil {
		return err
	}
	i.decryptAES(buf, off-head)
	copy(p, buf[head:])
	return nil
}
