package cli

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// This file implements --object as qemu-img's user_creatable_process_cmdline
// does: the argument is a JSON object or a keyval string whose first item
// may omit "qom-type=", it is checked against the object type's properties,
// and secrets are loaded (data, file, format=base64, keyid/iv decryption)
// into the block environment for the formats that need keys.

// objectTypes are the object types qemu-img 7.2 can create, with the
// properties `--object TYPE,help` lists. Only secrets do anything in qimg;
// the others are accepted as qemu-img accepts them.
var objectTypes = map[string][]string{
	"authz-list":        {"policy=<QAuthZListPolicy>", "rules=<QAuthZListRule>"},
	"authz-list-file":   {"filename=<string>", "refresh=<bool>"},
	"authz-simple":      {"identity=<string>"},
	"main-loop":         {"aio-max-batch=<int>", "thread-pool-max=<int>", "thread-pool-min=<int>"},
	"pr-manager-helper": {"path=<string>"},
	"secret":            {"data=<string>", "file=<string>", "format=<QCryptoSecretFormat>", "iv=<string>", "keyid=<string>"},
	"secret_keyring":    {"format=<QCryptoSecretFormat>", "iv=<string>", "keyid=<string>", "serial=<int32_t>"},
	"thread-context":    {"cpu-affinity=<int>", "node-affinity=<int>"},
	"throttle-group": {"limits=<ThrottleLimits>", "x-bps-read-max-length=<int>", "x-bps-read-max=<int>", "x-bps-read=<int>",
		"x-bps-total-max-length=<int>", "x-bps-total-max=<int>", "x-bps-total=<int>", "x-bps-write-max-length=<int>",
		"x-bps-write-max=<int>", "x-bps-write=<int>", "x-iops-read-max-length=<int>", "x-iops-read-max=<int>",
		"x-iops-read=<int>", "x-iops-size=<int>", "x-iops-total-max-length=<int>", "x-iops-total-max=<int>",
		"x-iops-total=<int>", "x-iops-write-max-length=<int>", "x-iops-write-max=<int>", "x-iops-write=<int>"},
	"tls-cipher-suites": {"dir=<string>", "endpoint=<QCryptoTLSCredsEndpoint>", "priority=<string>", "verify-peer=<bool>"},
	"tls-creds-anon":    {"dir=<string>", "endpoint=<QCryptoTLSCredsEndpoint>", "priority=<string>", "verify-peer=<bool>"},
	"tls-creds-psk":     {"dir=<string>", "endpoint=<QCryptoTLSCredsEndpoint>", "priority=<string>", "username=<string>", "verify-peer=<bool>"},
	"tls-creds-x509": {"dir=<string>", "endpoint=<QCryptoTLSCredsEndpoint>", "passwordid=<string>", "priority=<string>",
		"sanity-check=<bool>", "verify-peer=<bool>"},
}

// secretProps are a secret's properties in QAPI order (SecretCommonProperties,
// then SecretProperties).
var secretProps = []string{"loaded", "format", "keyid", "iv", "data", "file"}

// errExitOK signals that an option asked for output and the command should
// stop with exit code 0.
var errExitOK = errors.New("done")

// objectSpec is a parsed --object argument: its properties, every value a
// string, with dotted keys kept whole.
type objectSpec struct {
	props map[string]string
	help  bool
}

// parseKeyval parses a keyval string (util/keyval.c) with an implied first
// key: "key=value" items separated by commas, ",," an escaped comma in a
// value, "help" or "?" alone a help request, later values replacing
// earlier ones.
func parseKeyval(s, implied string) (*objectSpec, error) {
	spec := &objectSpec{props: map[string]string{}}
	for p := s; p != ""; {
		n := strings.IndexAny(p, "=,")
		if n < 0 {
			n = len(p)
		}
		if n > 0 && (n == len(p) || p[n] != '=') {
			if block.IsHelpOption(p[:n]) {
				spec.help = true
				p = strings.TrimPrefix(p[n:], ",")
				continue
			}
			if implied != "" {
				spec.props[implied] = p[:n]
				p = strings.TrimPrefix(p[n:], ",")
				implied = ""
				continue
			}
		}
		implied = ""
		key := p[:n]
		if !validKey(key) {
			return nil, fmt.Errorf("Invalid parameter '%s'", key)
		}
		if n == len(p) || p[n] != '=' {
			return nil, fmt.Errorf("Expected '=' after parameter '%s'", key)
		}
		var value string
		value, p = block.SplitValue(p[n+1:])
		p = strings.TrimPrefix(p, ",")
		for k := range spec.props {
			if strings.HasPrefix(k, key+".") || strings.HasPrefix(key, k+".") {
				short := key
				if strings.HasPrefix(key, k+".") {
					short = k
				}
				return nil, fmt.Errorf("Parameters '%s.*' used inconsistently", short)
			}
		}
		spec.props[key] = value
	}
	return spec, nil
}

// validKey reports whether a keyval key is a dotted path of QAPI names.
func validKey(k string) bool {
	for _, frag := range strings.Split(k, ".") {
		if frag == "" || !isLetter(frag[0]) {
			return false
		}
		for i := 1; i < len(frag); i++ {
			c := frag[i]
			if !isLetter(c) && !(c >= '0' && c <= '9') && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

// parseObjectJSON parses the JSON form of --object ("{"qom-type": …}").
func parseObjectJSON(s string) (*objectSpec, error) {
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(s))
	if err := dec.Decode(&m); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, errors.New("JSON parse error, premature EOI")
		}
		return nil, fmt.Errorf("JSON parse error, %v", err)
	}
	spec := &objectSpec{props: map[string]string{}}
	for k, v := range m {
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("Invalid parameter type for '%s', expected: string", k)
		}
		spec.props[k] = str
	}
	return spec, nil
}

// addObject handles one --object argument.
func (a *App) addObject(arg string) error {
	var spec *objectSpec
	var err error
	if strings.HasPrefix(arg, "{") {
		spec, err = parseObjectJSON(arg)
	} else {
		spec, err = parseKeyval(arg, "qom-type")
	}
	if err != nil {
		return err
	}
	typ, hasType := spec.props["qom-type"]
	if spec.help {
		if props, ok := objectTypes[typ]; ok && hasType {
			a.printf("%s options:\n", typ)
			for _, p := range props {
				a.printf("  %s\n", p)
			}
		} else {
			a.printObjectTypes()
		}
		return errExitOK
	}
	if !hasType {
		return errors.New("Parameter 'qom-type' is missing")
	}
	if _, ok := objectTypes[typ]; !ok {
		if block.IsHelpOption(typ) {
			a.printObjectTypes()
			return errExitOK
		}
		return fmt.Errorf("Parameter 'qom-type' does not accept value '%s'", typ)
	}
	id, ok := spec.props["id"]
	if !ok {
		return errors.New("Parameter 'id' is missing")
	}
	var data []byte
	if err := checkProps(typ, spec.props); err != nil {
		return err
	}
	if !validID(id) {
		return &parseError{"Parameter 'id' expects an identifier",
			"Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.\n"}
	}
	if typ == "secret" {
		if _, ok := spec.props["loaded"]; ok {
			return errors.New("Property 'secret.loaded' is not writable")
		}
	}
	env := a.env()
	if env.Secrets == nil {
		env.Secrets = map[string][]byte{}
	}
	if _, dup := env.Secrets[id]; dup || a.objects[id] {
		return fmt.Errorf("attempt to add duplicate property '%s' to object (type 'container')", id)
	}
	if typ != "secret" {
		if a.objects == nil {
			a.objects = map[string]bool{}
		}
		a.objects[id] = true
		return nil
	}
	data, err = a.loadSecret(id, spec.props)
	if err != nil {
		return err
	}
	env.Secrets[id] = data
	return nil
}

func (a *App) printObjectTypes() {
	a.printf("List of user creatable objects:\n")
	names := make([]string, 0, len(objectTypes))
	for n := range objectTypes {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		a.printf("  %s\n", n)
	}
}

// checkProps checks an object's properties as the QAPI visitor does: known
// names only and, for secrets, format one of raw and base64 and loaded a
// boolean.
func checkProps(typ string, props map[string]string) error {
	known := func(name string) bool {
		if typ == "secret" {
			return slices.Contains(secretProps, name)
		}
		return slices.ContainsFunc(objectTypes[typ], func(p string) bool { return strings.HasPrefix(p, name+"=") })
	}
	if typ == "secret" {
		if f, ok := props["format"]; ok && f != "raw" && f != "base64" {
			return fmt.Errorf("Parameter 'format' does not accept value '%s'", f)
		}
		if v, ok := props["loaded"]; ok {
			if _, valid := block.ParseBool(v); !valid {
				return errors.New("Parameter 'loaded' expects 'on' or 'off'")
			}
		}
	}
	var unexpected []string
	for k := range props {
		name, _, _ := strings.Cut(k, ".")
		switch {
		case k == "qom-type" || k == "id":
		case !known(name):
			unexpected = append(unexpected, name)
		case name != k && typ == "secret":
			return fmt.Errorf("Invalid parameter type for '%s', expected: string", name)
		}
	}
	if len(unexpected) > 0 {
		slices.Sort(unexpected)
		return fmt.Errorf("Parameter '%s' is unexpected", unexpected[0])
	}
	return nil
}

// loadSecret loads a secret's value as qcrypto_secret_complete does.
func (a *App) loadSecret(id string, props map[string]string) ([]byte, error) {
	data, hasData := props["data"]
	file, hasFile := props["file"]
	var input []byte
	switch {
	case hasFile && hasData:
		return nil, errors.New("'file' and 'data' are mutually exclusive")
	case hasFile:
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("Unable to read %s: %s", file, gFileError(file, err))
		}
		input = b
	case hasData:
		input = []byte(data)
	default:
		return nil, errors.New("Either 'file' or 'data' must be provided")
	}
	base64 := props["format"] == "base64"
	keyid, hasKey := props["keyid"]
	if !hasKey {
		if base64 {
			return qbase64Decode(string(input))
		}
		return input, nil
	}
	key, ok := a.env().Secrets[keyid]
	switch {
	case !ok && a.objects[keyid]:
		return nil, fmt.Errorf("Object with id '%s' is not a secret", keyid)
	case !ok && keyid == id:
		return nil, fmt.Errorf("Secret with id '%s' has no data", keyid)
	case !ok:
		return nil, fmt.Errorf("No secret with id '%s'", keyid)
	case len(key) != 32:
		return nil, errors.New("Key should be 32 bytes in length")
	}
	ivText, ok := props["iv"]
	if !ok {
		return nil, errors.New("IV is required to decrypt secret")
	}
	iv, err := qbase64Decode(ivText)
	if err != nil {
		return nil, err
	}
	if len(iv) != 16 {
		return nil, fmt.Errorf("IV should be 16 bytes in length not %d", len(iv))
	}
	ciphertext := input
	if base64 {
		if ciphertext, err = qbase64Decode(string(input)); err != nil {
			return nil, err
		}
	}
	if len(ciphertext)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("Length %d must be a multiple of block size %d", len(ciphertext), aes.BlockSize)
	}
	block, _ := aes.NewCipher(key)
	plain := make([]byte, len(ciphertext))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(plain, ciphertext)
	if len(plain) == 0 {
		return plain, nil
	}
	pad := int(plain[len(plain)-1])
	if pad > 16 || pad > len(plain) {
		return nil, fmt.Errorf("Incorrect number of padding bytes (%d) found on decrypted data", pad)
	}
	return plain[:len(plain)-pad], nil
}

// gFileError words a file read error as GLib's g_file_get_contents does.
func gFileError(name string, err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Op == "read" {
		return fmt.Sprintf("Error reading file “%s”: %s", name, storage.Strerror(err))
	}
	return fmt.Sprintf("Failed to open file “%s”: %s", name, storage.Strerror(err))
}

// qbase64Decode decodes base64 as QEMU's qbase64_decode does: the text may
// hold only the base64 alphabet, '=' and newlines; decoding is GLib's,
// which ignores newlines and an incomplete last group.
func qbase64Decode(s string) ([]byte, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return nil, errors.New("Base64 data contains embedded NUL characters")
		}
		if !strings.ContainsRune(alphabet+"=\n", rune(s[i])) {
			return nil, errors.New("Base64 data contains invalid characters")
		}
	}
	var out []byte
	var group [4]byte
	n, pad := 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\n' {
			continue
		}
		if c == '=' {
			pad++
			group[n] = 0
		} else {
			group[n] = byte(strings.IndexByte(alphabet, c))
		}
		n++
		if n == 4 {
			v := uint32(group[0])<<18 | uint32(group[1])<<12 | uint32(group[2])<<6 | uint32(group[3])
			out = append(out, byte(v>>16), byte(v>>8), byte(v))
			out = out[:len(out)-min(pad, 2)]
			n, pad = 0, 0
		}
	}
	return out, nil
}

// objectOption handles an --object argument inside a command's option loop:
// it returns an exit code and true when the command must stop.
func (a *App) objectOption(spec string) (int, bool) {
	err := a.addObject(spec)
	if err == nil {
		return 0, false
	}
	if errors.Is(err, errExitOK) {
		return 0, true
	}
	a.reportErr("", err)
	return 1, true
}
