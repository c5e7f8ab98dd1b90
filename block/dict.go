package block

// Dict is an ordered set of named values in the shape of a QAPI object, used
// for format-specific image information. Values are string, bool, int64,
// uint64, float64, *Dict or []any. Keys keep the order they were first set
// in, which must be the order of QEMU's QAPI schema: QEMU's output order
// depends on it.
type Dict struct {
	keys   []string
	values []any
}

// NewDict returns an empty Dict.
func NewDict() *Dict { return &Dict{} }

// Set stores a value, replacing (in place) any value the key had. It returns
// d so calls chain.
func (d *Dict) Set(key string, value any) *Dict {
	for i, k := range d.keys {
		if k == key {
			d.values[i] = value
			return d
		}
	}
	d.keys = append(d.keys, key)
	d.values = append(d.values, value)
	return d
}

// Get returns the value of key and whether it is present.
func (d *Dict) Get(key string) (any, bool) {
	for i, k := range d.keys {
		if k == key {
			return d.values[i], true
		}
	}
	return nil, false
}

// Len is the number of keys.
func (d *Dict) Len() int { return len(d.keys) }

// Keys returns the keys in insertion order.
func (d *Dict) Keys() []string { return append([]string(nil), d.keys...) }

// Each calls fn for every key and value in insertion order.
func (d *Dict) Each(fn func(key string, value any)) {
	for i, k := range d.keys {
		fn(k, d.values[i])
	}
}
