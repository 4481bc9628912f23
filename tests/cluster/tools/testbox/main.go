// Command testbox is the program inside the test bed's own test image (the images of the
// product are built elsewhere). It runs a list of steps separated by ";" arguments and
// stops at the first step that fails, with that step's exit code, like `sh -e`:
//
//	testbox echo started ";" write /data/out hello ";" sleep 600
//
// Steps:
//
//	echo WORDS...        print the words (stdout)
//	echo-err WORDS...    print the words (stderr)
//	cat PATH             copy a file to stdout
//	copy SRC DST         append the contents of SRC to DST
//	write PATH TEXT      create/truncate PATH with exactly TEXT
//	append PATH TEXT     append TEXT to PATH
//	try-write PATH       try to create PATH; print "PATH: ok" or "PATH: <error>" (never fails)
//	once PATH            run the next step only if PATH does not exist yet (PATH is created)
//	sleep SECONDS        sleep (fractions allowed)
//	exit CODE            exit with CODE
//	alloc MIB            allocate and touch MIB MiB of memory, keep it
//	whoami               print uid, gid, groups, and CapEff/Seccomp/NoNewPrivs of this process
//	api PATH             GET PATH from the API server as the pod's service account
//	                     (KUBERNETES_SERVICE_HOST/PORT, the mounted token and CA); print
//	                     "HTTP <code>" and the body; fails unless 2xx
//	get URL              plain HTTP GET; print the body; fails unless 2xx
//
// Kubernetes expands $(VAR) in command and args before the program starts, so steps can
// use environment variables that way.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

var kept [][]byte // memory held by alloc

type step struct {
	name string
	args []string
}

func parse(argv []string) []step {
	var steps []step
	cur := []string{}
	flush := func() {
		if len(cur) > 0 {
			steps = append(steps, step{cur[0], cur[1:]})
		}
		cur = []string{}
	}
	for _, a := range argv {
		if a == ";" {
			flush()
			continue
		}
		cur = append(cur, a)
	}
	flush()
	return steps
}

func main() {
	steps := parse(os.Args[1:])
	if len(steps) == 0 {
		fmt.Fprintln(os.Stderr, "usage: testbox STEP [ARGS...] [; STEP [ARGS...]]... (see the source for steps)")
		os.Exit(2)
	}
	for i := 0; i < len(steps); i++ {
		s := steps[i]
		skipNext, code, err := run(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "testbox %s: %v\n", s.name, err)
			os.Exit(code)
		}
		if skipNext {
			i++
		}
	}
}

func need(s step, n int) error {
	if len(s.args) < n {
		return fmt.Errorf("needs %d argument(s), got %d", n, len(s.args))
	}
	return nil
}

// run executes one step: (skip the next step, exit code on error, error).
func run(s step) (bool, int, error) {
	counts := map[string]int{"cat": 1, "copy": 2, "write": 2, "append": 2, "try-write": 1, "once": 1,
		"sleep": 1, "exit": 1, "alloc": 1, "api": 1, "get": 1}
	if n, ok := counts[s.name]; ok {
		if err := need(s, n); err != nil {
			return false, 2, err
		}
	}
	switch s.name {
	case "echo":
		fmt.Println(strings.Join(s.args, " "))
	case "echo-err":
		fmt.Fprintln(os.Stderr, strings.Join(s.args, " "))
	case "cat":
		b, err := os.ReadFile(s.args[0])
		if err != nil {
			return false, 1, err
		}
		os.Stdout.Write(b)
	case "copy":
		b, err := os.ReadFile(s.args[0])
		if err != nil {
			return false, 1, err
		}
		return false, 1, appendFile(s.args[1], b)
	case "write":
		return false, 1, os.WriteFile(s.args[0], []byte(s.args[1]), 0o644)
	case "append":
		return false, 1, appendFile(s.args[0], []byte(s.args[1]))
	case "try-write":
		err := os.WriteFile(s.args[0], []byte("x"), 0o644)
		if err == nil {
			fmt.Printf("%s: ok\n", s.args[0])
		} else {
			fmt.Printf("%s: %v\n", s.args[0], err)
		}
	case "once":
		f, err := os.OpenFile(s.args[0], os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			if os.IsExist(err) {
				return true, 0, nil
			}
			return false, 1, err
		}
		f.Close()
	case "sleep":
		secs, err := strconv.ParseFloat(s.args[0], 64)
		if err != nil {
			return false, 2, err
		}
		time.Sleep(time.Duration(secs * float64(time.Second)))
	case "exit":
		code, err := strconv.Atoi(s.args[0])
		if err != nil {
			return false, 2, err
		}
		os.Exit(code)
	case "alloc":
		mib, err := strconv.Atoi(s.args[0])
		if err != nil {
			return false, 2, err
		}
		for i := 0; i < mib; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			kept = append(kept, b)
		}
		fmt.Printf("allocated %d MiB\n", mib)
	case "whoami":
		groups, _ := syscall.Getgroups()
		fmt.Printf("uid=%d gid=%d groups=%v\n", os.Getuid(), os.Getgid(), groups)
		st, err := os.ReadFile("/proc/self/status")
		if err != nil {
			return false, 1, err
		}
		for _, line := range strings.Split(string(st), "\n") {
			for _, k := range []string{"CapEff:", "CapBnd:", "Seccomp:", "NoNewPrivs:"} {
				if strings.HasPrefix(line, k) {
					fmt.Println(strings.Join(strings.Fields(line), " "))
				}
			}
		}
	case "api":
		return false, 1, api(s.args[0])
	case "get":
		return false, 1, get(s.args[0])
	default:
		return false, 2, fmt.Errorf("unknown step (see tests/cluster/tools/testbox/main.go)")
	}
	return false, 0, nil
}

func appendFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func api(path string) error {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return fmt.Errorf("KUBERNETES_SERVICE_HOST/PORT not set")
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("no certificate in %s/ca.crt", saDir)
	}
	c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest("GET", "https://"+net.JoinHostPort(host, port)+path, nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	return do(c, req)
}

func get(url string) error {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return err
	}
	return do(&http.Client{Timeout: 20 * time.Second}, req)
}

func do(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("HTTP %d\n%s\n", resp.StatusCode, body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d from %s", resp.StatusCode, req.URL)
	}
	return nil
}
