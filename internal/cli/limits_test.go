package cli

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseLimits(t *testing.T) {
	tests := []struct {
		spec string
		want limits
		err  string
	}{
		{"", limits{}, ""},
		{"memory=512M", limits{memory: 512 << 20, givenMemory: true}, ""},
		{"memory=2G,time=30", limits{memory: 2 << 30, time: 30 * time.Second, givenMemory: true, givenTime: true}, ""},
		{"time=1m30s", limits{time: 90 * time.Second, givenTime: true}, ""},
		{"time=0.5", limits{time: 500 * time.Millisecond, givenTime: true}, ""},
		{"depth=4", limits{depth: 4, givenDepth: true}, ""},
		{"memory=off,time=none,depth=0", limits{givenMemory: true, givenTime: true, givenDepth: true}, ""},
		{"memory=1k", limits{}, "Invalid memory limit '1k': at least 16 MiB are needed"},
		{"memory=lots", limits{}, "Invalid memory limit 'lots'"},
		{"time=-1", limits{}, "Invalid time limit '-1'"},
		{"time=soon", limits{}, "Invalid time limit 'soon'"},
		{"depth=-3", limits{}, "Invalid backing chain depth limit '-3'"},
		{"cpu=30", limits{}, "Unknown limit 'cpu'"},
		{"memory", limits{}, "Invalid limit 'memory'"},
	}
	for _, tc := range tests {
		var got limits
		err := parseLimits(tc.spec, &got)
		if tc.err != "" {
			if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
				t.Errorf("parseLimits(%q) = %v, want error %q", tc.spec, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseLimits(%q) = %+v, %v; want %+v", tc.spec, got, err, tc.want)
		}
	}
}

func TestUntrustedDefaults(t *testing.T) {
	got := limits{}.withDefaults(true)
	if got.memory != 1<<30 || got.time != 15*time.Second || got.depth != 16 {
		t.Errorf("untrusted defaults: %+v", got)
	}
	// Limits given explicitly, even "off", win over the defaults.
	var l limits
	if err := parseLimits("memory=off,depth=100", &l); err != nil {
		t.Fatal(err)
	}
	got = l.withDefaults(true)
	if got.memory != 0 || got.depth != 100 || got.time != 15*time.Second {
		t.Errorf("untrusted with explicit limits: %+v", got)
	}
	if got := l.withDefaults(false); got.time != 0 {
		t.Errorf("trusted mode has a default time limit: %+v", got)
	}
}

// limitApp returns an App whose limit exits are recorded instead of ending
// the test process.
func limitApp() (*App, *bytes.Buffer, chan int) {
	var errb bytes.Buffer
	exits := make(chan int, 1)
	a := &App{Prog: "qimg", Stderr: &syncWriter{w: &errb}, Exit: func(code int) { exits <- code }}
	return a, &errb, exits
}

// syncWriter serialises writes (the watchdog writes from its goroutine).
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestTimeLimit(t *testing.T) {
	a, errb, exits := limitApp()
	stop := a.startLimits(limits{time: 20 * time.Millisecond})
	defer stop()
	select {
	case code := <-exits:
		if code != 1 {
			t.Errorf("exit code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the time limit did not end the run")
	}
	if got := errb.String(); got != "qimg: Time limit of 20ms exceeded; raise it with --limits time=SECONDS\n" {
		t.Errorf("stderr %q", got)
	}
}

func TestMemoryLimit(t *testing.T) {
	a, errb, exits := limitApp()
	stop := a.startLimits(limits{memory: 64 << 20})
	defer stop()
	hog := make([][]byte, 0, 64)
	for i := 0; i < cap(hog); i++ {
		b := make([]byte, 4<<20)
		for j := range b {
			b[j] = byte(j)
		}
		hog = append(hog, b)
	}
	select {
	case code := <-exits:
		if code != 1 {
			t.Errorf("exit code %d", code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exceeding the memory limit did not end the run")
	}
	if got := errb.String(); got != "qimg: Memory limit of 64 MiB exceeded; raise it with --limits memory=SIZE\n" {
		t.Errorf("stderr %q", got)
	}
	if len(hog) != cap(hog) {
		t.Fatal("unreachable")
	}
}

func TestLimitsStopQuietly(t *testing.T) {
	a, errb, exits := limitApp()
	stop := a.startLimits(limits{memory: 1 << 30, time: time.Hour, depth: 3})
	if a.Env.MaxChainDepth != 3 {
		t.Errorf("chain depth %d", a.Env.MaxChainDepth)
	}
	time.Sleep(3 * limitPoll)
	stop()
	select {
	case code := <-exits:
		t.Fatalf("exit %d: %s", code, errb)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestLimitsOption(t *testing.T) {
	tests := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"qimg", "--limits", "cpu=1", "info", "x"}, 1, "qimg: Unknown limit 'cpu': expected memory, time or depth\n"},
		{[]string{"qimg", "--limits=time=x", "info", "x"}, 1, "qimg: Invalid time limit 'x': expected seconds or a duration such as 90s or 10m\n"},
		{[]string{"qimg", "--limits"}, 1, "qimg: missing argument for option '--limits'\nTry 'qimg --help' for more information\n"},
	}
	for _, tc := range tests {
		code, _, stderr := runMain(tc.args...)
		if code != tc.code || stderr != tc.stderr {
			t.Errorf("%q: exit %d, stderr %q; want %d, %q", tc.args, code, stderr, tc.code, tc.stderr)
		}
	}
	a := &App{Prog: "qimg", Stdout: &bytes.Buffer{}, Stderr: &bytes.Buffer{},
		Getenv: func(k string) string { return map[string]string{"QIMG_LIMITS": "depth=x"}[k] }}
	if code := a.qemuImg([]string{"info", "x"}); code != 1 || a.Stderr.(*bytes.Buffer).String() != "qimg: QIMG_LIMITS: Invalid backing chain depth limit 'x'\n" {
		t.Errorf("QIMG_LIMITS=depth=x: exit %d, %q", code, a.Stderr)
	}
}
