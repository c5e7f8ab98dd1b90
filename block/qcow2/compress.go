package qcow2

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/zstd"
)

// Compressed clusters hold one cluster compressed with raw deflate (zlib
// without a header, as QEMU writes it with a 4 KiB window) or zstd. A
// compressed cluster's size is known only to the sector, so decompression
// stops once a whole cluster is produced; it never produces more.

// errDecompress is the error for compressed data that does not inflate to a
// whole cluster.
var errDecompress = errors.New("Input/output error")

// deflateWindow is the window QEMU compresses with (windowBits -12); QEMU
// inflates with the same window, so streams must not reach back further.
const deflateWindow = 4096

// codec compresses and decompresses clusters of one image, reusing its
// (de)compressors.
type codec struct {
	kind        uint8
	clusterSize int
	inflaters   sync.Pool // flate readers
	deflaters   sync.Pool // *flate.Writer with the 4 KiB window
	huffmen     sync.Pool // *flate.Writer, Huffman only
	zdecoders   sync.Pool // *zstd.Decoder
	zencoders   sync.Pool // *zstd.Encoder, default level
	zbetter     sync.Pool // *zstd.Encoder, better compression
}

func newCodec(kind uint8, clusterSize int) *codec {
	return &codec{kind: kind, clusterSize: clusterSize}
}

// decompress inflates src into dst, which is one cluster long; it fails
// unless src produces a whole cluster.
func (c *codec) decompress(dst, src []byte) error {
	if c.kind == compressionZstd {
		return c.unzstd(dst, src)
	}
	return c.inflate(dst, src)
}

func (c *codec) inflate(dst, src []byte) error {
	br := bytes.NewReader(src)
	var r io.ReadCloser
	if v := c.inflaters.Get(); v != nil {
		r = v.(io.ReadCloser)
		if err := r.(flate.Resetter).Reset(br, nil); err != nil {
			return errDecompress
		}
	} else {
		r = flate.NewReader(br)
	}
	_, err := io.ReadFull(r, dst)
	c.inflaters.Put(r)
	if err != nil {
		return errDecompress
	}
	return nil
}

// zstdMaxWindow bounds the window a zstd frame may ask for; QEMU's frames
// for clusters of at most 2 MiB never need more.
const zstdMaxWindow = 8 << 20

func (c *codec) unzstd(dst, src []byte) error {
	var d *zstd.Decoder
	if v := c.zdecoders.Get(); v != nil {
		d = v.(*zstd.Decoder)
	} else {
		var err error
		d, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(zstdMaxWindow),
			zstd.WithDecoderLowmem(true))
		if err != nil {
			return err
		}
	}
	defer func() {
		_ = d.Reset(nil)
		c.zdecoders.Put(d)
	}()
	if err := d.Reset(bytes.NewReader(src)); err != nil {
		return errDecompress
	}
	if _, err := io.ReadFull(d, dst); err != nil {
		return errDecompress
	}
	return nil
}

// limitedBuffer collects compressed output up to a limit.
type limitedBuffer struct {
	b     []byte
	limit int
	over  bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if len(l.b)+len(p) > l.limit {
		l.over = true
		return 0, errTooLarge
	}
	l.b = append(l.b, p...)
	return len(p), nil
}

var errTooLarge = errors.New("compressed data does not fit")

// compress compresses one cluster into dst (reusing its capacity) and
// returns the compressed bytes, or nil when they would not be smaller than
// the cluster less one byte (QEMU then stores the cluster uncompressed).
func (c *codec) compress(dst, src []byte) ([]byte, error) {
	limit := c.clusterSize - 1
	if c.kind == compressionZstd {
		out, err := c.zstdEncode(&c.zencoders, zstd.SpeedDefault, dst, src, limit)
		if err != nil {
			return nil, err
		}
		// The fast levels store literals of blocks without matches raw;
		// a better level codes them.
		return orBetter(out, dst, src, func(d []byte) ([]byte, error) {
			return c.zstdEncode(&c.zbetter, zstd.SpeedBetterCompression, d, src, limit)
		})
	}
	out, err := c.deflate(&c.deflaters, dst, src, limit, func(w io.Writer) (*flate.Writer, error) {
		return flate.NewWriterWindow(w, deflateWindow)
	})
	if err != nil {
		return nil, err
	}
	// The windowed encoder stores blocks in which it finds no match,
	// even when their bytes are skewed (text, base64) and zlib would
	// Huffman-code them; Huffman only (no back-references, so valid for
	// any window) codes them.
	return orBetter(out, dst, src, func(d []byte) ([]byte, error) {
		return c.deflate(&c.huffmen, d, src, limit, func(w io.Writer) (*flate.Writer, error) {
			return flate.NewWriter(w, flate.HuffmanOnly)
		})
	})
}

// orBetter returns out, or what retry makes when that is smaller. retry
// runs only when out saved less than a sixteenth of src (nil: nothing); it
// gets dst's capacity when out does not use it.
func orBetter(out, dst, src []byte, retry func(dst []byte) ([]byte, error)) ([]byte, error) {
	if out != nil && len(out) <= len(src)-len(src)/16 {
		return out, nil
	}
	var d []byte
	if out == nil {
		d = dst
	}
	b, err := retry(d)
	if err != nil {
		return nil, err
	}
	if b != nil && (out == nil || len(b) < len(out)) {
		return b, nil
	}
	return out, nil
}

// zstdEncode compresses src at a level with an encoder from pool into
// dst's capacity; nil when the output exceeds limit.
func (c *codec) zstdEncode(pool *sync.Pool, level zstd.EncoderLevel, dst, src []byte, limit int) ([]byte, error) {
	var e *zstd.Encoder
	if v := pool.Get(); v != nil {
		e = v.(*zstd.Encoder)
	} else {
		var err error
		e, err = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(level),
			zstd.WithWindowSize(zstdWindow(c.clusterSize)))
		if err != nil {
			return nil, err
		}
	}
	out := e.EncodeAll(src, dst[:0])
	pool.Put(e)
	if len(out) > limit {
		return nil, nil
	}
	return out, nil
}

// deflate compresses src with a writer from pool (made by mk when the
// pool is empty) into dst's capacity; nil when the output exceeds limit.
func (c *codec) deflate(pool *sync.Pool, dst, src []byte, limit int, mk func(io.Writer) (*flate.Writer, error)) ([]byte, error) {
	buf := &limitedBuffer{b: dst[:0], limit: limit}
	var w *flate.Writer
	if v := pool.Get(); v != nil {
		w = v.(*flate.Writer)
		w.Reset(buf)
	} else {
		var err error
		w, err = mk(buf)
		if err != nil {
			return nil, err
		}
	}
	_, err := w.Write(src)
	if err == nil {
		err = w.Close()
	}
	pool.Put(w)
	if buf.over {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return buf.b, nil
}

// zstdWindow is the smallest zstd window (a power of two, at least 1 KiB)
// that covers a cluster.
func zstdWindow(clusterSize int) int {
	w := zstd.MinWindowSize
	for w < clusterSize {
		w <<= 1
	}
	return w
}
