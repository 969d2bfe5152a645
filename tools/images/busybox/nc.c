/*
 * nc for the busybox:1.35 stand-in image: `nc -z [-v] [-w SECONDS] HOST PORT` reports whether
 * a TCP connection to HOST:PORT can be opened (exit 0) or not (exit 1), as the netcat of the
 * real busybox:1.35 image does. Debian's busybox applet has no -z, and the chart's init
 * containers wait with `until nc -z kafka 9092; do sleep 2; done`.
 *
 * Every other use of nc (no -z) is handed to the busybox applet unchanged.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUSYBOX "/bin/busybox"

/* Connects to one address, waiting at most timeout_ms (negative: the kernel's own limit). */
static int can_connect(const struct addrinfo *address, int timeout_ms)
{
    int fd = socket(address->ai_family, address->ai_socktype | SOCK_CLOEXEC,
                    address->ai_protocol);
    if (fd < 0)
        return 0;
    int flags = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    int connected = connect(fd, address->ai_addr, address->ai_addrlen) == 0;
    if (!connected && errno == EINPROGRESS) {
        struct pollfd waiting = {.fd = fd, .events = POLLOUT};
        int error = 0;
        socklen_t length = sizeof error;
        connected = poll(&waiting, 1, timeout_ms) == 1
                    && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0
                    && error == 0;
    }
    close(fd);
    return connected;
}

static int scan(const char *host, const char *port, int timeout_ms, int verbose)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *addresses;
    int status = getaddrinfo(host, port, &hints, &addresses);
    if (status != 0) {
        fprintf(stderr, "nc: %s: %s\n", host, gai_strerror(status));
        return 1;
    }
    int open = 0;
    for (const struct addrinfo *address = addresses; address && !open; address = address->ai_next)
        open = can_connect(address, timeout_ms);
    freeaddrinfo(addresses);
    if (verbose)
        fprintf(stderr, "%s (%s) %s\n", host, port, open ? "open" : "closed");
    return open ? 0 : 1;
}

int main(int argc, char **argv)
{
    int zero_io = 0, verbose = 0, timeout_ms = -1;
    int option;
    /* '+' stops at the first operand, as POSIX getopt does; opterr off so that options
       meant for the applet are not reported here. */
    opterr = 0;
    while ((option = getopt(argc, argv, "+zvw:")) != -1) {
        if (option == 'z')
            zero_io = 1;
        else if (option == 'v')
            verbose = 1;
        else if (option == 'w')
            timeout_ms = atoi(optarg) * 1000;
        else
            break;
    }
    if (!zero_io) {
        argv[0] = "nc";
        execv(BUSYBOX, argv);
        perror("nc: " BUSYBOX);
        return 127;
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: nc -z [-v] [-w SECONDS] HOST PORT\n");
        return 2;
    }
    return scan(argv[optind], argv[optind + 1], timeout_ms, verbose);
}
