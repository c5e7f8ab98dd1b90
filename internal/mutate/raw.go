package mutate

import (
	"bytes"
	"fmt"
)

// Raw images have no structure to damage; what matters is their size
// (empty, not a multiple of a sector, terabytes of hole) and content that
// looks like another format, since formats are probed from content: a
// "raw" upload that starts with a qcow2 header or a VMDK descriptor naming
// a host file is the classic attack on image services.

func rawFormat() Format {
	return Format{
		Bases: func() ([]Base, error) {
			small := bytes.Repeat([]byte("qimg raw data 0123456789abcdef\n"), 64<<10/32)
			return []Base{
				{Name: "small", Main: "disk.raw", Files: map[string]File{"disk.raw": {Data: small}},
					Meta: []Range{{0, 512}}, Flips: 2},
				{Name: "empty", Main: "disk.raw", Files: map[string]File{"disk.raw": {}}, NoGeneric: true},
				{Name: "odd", Main: "disk.raw", Files: map[string]File{"disk.raw": {Data: small[:1000]}}, NoGeneric: true},
				{Name: "sparse-1t", Main: "disk.raw", Files: map[string]File{"disk.raw": {Data: small[:4096], Size: 1 << 40}}, NoGeneric: true},
			}, nil
		},
		Mutators: []Mutator{{Name: "disguise", Apply: rawDisguise, Essential: true}},
	}
}

// rawDisguise makes raw files whose first bytes are another format's
// header naming a host file.
func rawDisguise(b Base, t Target) []Mutation {
	if b.Name != "small" {
		return nil
	}
	data := b.Files[b.Main].Data
	var out []Mutation
	over := func(name string, head []byte) {
		d := bytes.Clone(data)
		if len(head) > len(d) {
			d = append(d, make([]byte, len(head)-len(d))...)
		}
		copy(d, head)
		out = append(out, Mutation{Name: name, Base: b.with(d)})
	}
	if v3, err := loadTestdata("v3.qcow2"); err == nil {
		qb := Base{Main: "x", Files: map[string]File{"x": {Data: v3}}}
		for _, ref := range []struct {
			name   string
			data   bool
			target string
		}{
			{"qcow2-backing-secret", false, t.Secret},
			{"qcow2-backing-json", false, fmt.Sprintf(`json:{"file":{"driver":"file","filename":%q}}`, t.Secret)},
			{"qcow2-data-file-secret", true, t.Secret},
		} {
			if nb, err := q2Embed(qb, ref.target, "", ref.data); err == nil {
				over(ref.name, nb.Files["x"].Data)
			}
		}
	}
	over("qcow2-magic-only", []byte("QFI\xfb\x00\x00\x00\x03"))
	for _, ext := range []string{t.Secret, "../../../../../../../../.." + t.Secret, "nbd://" + t.NetAddr + "/x"} {
		desc := fmt.Sprintf("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n"+
			"# Extent description\nRW 128 FLAT \"%s\" 0\n\n# The Disk Data Base\nddb.virtualHWVersion = \"4\"\n", ext)
		over(fmt.Sprintf("vmdk-descriptor-%d", len(out)), []byte(desc))
	}
	return out
}
