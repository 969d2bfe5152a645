// Command probe is the one program of the e2e node's smoke-test image: a pod running it
// serves a page, resolves names, or fetches a URL, so that the node's networking, cluster
// DNS and Services can be checked with nothing else in the image.
//
//	probe serve PORT FILE       serve FILE at every path on PORT
//	probe lookup NAME...        print "NAME ADDRESS" for each address of each NAME
//	probe get URL TRIES         print the body of URL, retrying once a second
//
// Names resolve as in any pod: through the pod's /etc/resolv.conf, its search list and
// ndots (Go's own resolver in a static binary).
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe serve PORT FILE | lookup NAME... | get URL TRIES")
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2], os.Args[3])
	case "lookup":
		lookup(os.Args[2:])
	case "get":
		tries, err := strconv.Atoi(os.Args[3])
		if err != nil {
			fail("TRIES must be a number")
		}
		get(os.Args[2], tries)
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "probe:", message)
	os.Exit(2)
}

func serve(port, file string) {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, file)
	})
	fmt.Println("serving", file, "on port", port)
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fail(err.Error())
	}
}

func lookup(names []string) {
	failed := false
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		addresses, err := net.DefaultResolver.LookupHost(ctx, name)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			failed = true
			continue
		}
		for _, address := range addresses {
			fmt.Println(name, address)
		}
	}
	if failed {
		os.Exit(1)
	}
}

func get(url string, tries int) {
	client := http.Client{Timeout: 2 * time.Second}
	for try := 1; ; try++ {
		response, err := client.Get(url)
		if err == nil {
			body, readErr := io.ReadAll(response.Body)
			response.Body.Close()
			if readErr == nil && response.StatusCode == http.StatusOK {
				os.Stdout.Write(body)
				return
			}
			err = fmt.Errorf("status %d, %v", response.StatusCode, readErr)
		}
		if try >= tries {
			fail(err.Error())
		}
		time.Sleep(time.Second)
	}
}
