// Command etcd is the etcd server, built from the published etcd server module
// exactly as etcd's own server/main.go does, so that no etcd release tarball
// (which this machine cannot download) is needed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
