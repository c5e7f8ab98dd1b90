package qcow2

import "github.com/qimg/qimg/block"

// refCounts are the references to each host cluster an image's structures
// hold, for tests that compare them with refcounts.
type refCounts struct {
	counts []uint32
	// errs counts references that could not be counted (a check would
	// call them corruptions).
	errs int
}

// countAll counts the references to each host cluster as a check does,
// without reporting (the caller holds the lock).
func (i *Image) countAll() (*refCounts, error) {
	var res block.CheckResult
	c := &checker{i: i, report: func(string) {}, prog: i.prog, buf: make([]byte, i.clusterSize), length: -1}
	if i.write {
		if err := i.l2Cache.write(); err != nil {
			return nil, err
		}
	}
	size, err := i.f.Size()
	if err != nil {
		return nil, err
	}
	c.imrt = newRefcountArray(uint(i.hdr.RefcountOrder), i.clusterSize)
	if err := c.imrt.resize(i.sizeToClusters(size)); err != nil {
		return nil, err
	}
	rebuild := false
	if err := c.calculateRefcounts(&res, 0, &rebuild); err != nil {
		return nil, err
	}
	out := &refCounts{counts: make([]uint32, c.imrt.size), errs: int(res.Corruptions)}
	for k := range out.counts {
		out.counts[k] = uint32(c.imrt.get(int64(k)))
	}
	return out, nil
}
