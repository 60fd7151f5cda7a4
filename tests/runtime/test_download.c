/* test_download.c - --download against a local python3 http.server, including a 404. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "flowc_rt.h"
#include "rt_test_util.h"

static char *served;   /* what the server publishes */
static char *received; /* where downloads go */
static pid_t server = -1;
static int port;
static char err[2048];

static void setup(void) {
  served = rtt_make_temp_dir();
  received = rtt_make_temp_dir();
  err[0] = '\0';
}

/* Runs even when an assertion failed, so the server never outlives the test. */
static void teardown(void) {
  if (server > 0) {
    kill(server, SIGTERM);
    waitpid(server, NULL, 0);
    server = -1;
  }
  rtt_remove_tree(served);
  rtt_remove_tree(received);
  free(served);
  free(received);
}

TestSuite(download, .init = setup, .fini = teardown);

/* A port the kernel considers free right now. */
static int pick_free_port(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  cr_assert_geq(s, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t len = sizeof a;
  cr_assert_eq(getsockname(s, (struct sockaddr *)&a, &len), 0);
  close(s);
  return ntohs(a.sin_port);
}

static int can_connect(int p) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  if (s < 0) return 0;
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)p);
  int ok = connect(s, (struct sockaddr *)&a, sizeof a) == 0;
  close(s);
  return ok;
}

/* Starts python3 -m http.server on 127.0.0.1 serving `served`, waiting up to
 * about 5 s for it to accept connections. */
static void start_server(void) {
  const char *python = rtt_python_for("import http.server");
  if (!python) cr_skip_test("python3 is not available");
  port = pick_free_port();
  char port_text[16];
  snprintf(port_text, sizeof port_text, "%d", port);
  server = fork();
  cr_assert_neq(server, -1);
  if (server == 0) {
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      dup2(devnull, 1);
      dup2(devnull, 2);
    }
    execlp(python, python, "-m", "http.server", port_text, "--bind", "127.0.0.1",
           "--directory", served, (char *)NULL);
    _exit(127);
  }
  for (int attempt = 0; attempt < 100; attempt++) {
    if (can_connect(port)) return;
    int status = 0;
    cr_assert_eq(waitpid(server, &status, WNOHANG), 0, "the http server exited (status %d)",
                 status);
    struct timespec pause = {0, 50 * 1000000L};
    nanosleep(&pause, NULL);
  }
  cr_assert_fail("the http server did not start listening on port %d within 5 s", port);
}

static char *base_url(const char *suffix) {
  char *url = malloc(128);
  cr_assert_not_null(url);
  snprintf(url, 128, "http://127.0.0.1:%d%s", port, suffix);
  return url;
}

Test(download, fetches_the_four_files_then_they_load) {
  rtt_write_mnist_dir(served, 1, 40, 9, 28, 28);
  start_server();
  char *url = base_url("");
  cr_assert_eq(flrt_download_mnist(url, received, err, sizeof err), 0, "%s", err);
  free(url);

  const char *names[4] = {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"};
  for (int i = 0; i < 4; i++) {
    char *a = rtt_path(served, names[i]), *b = rtt_path(received, names[i]);
    size_t la, lb;
    unsigned char *da = rtt_read_file(a, &la), *db = rtt_read_file(b, &lb);
    cr_assert_eq(la, lb, "%s: %zu bytes served, %zu received", names[i], la, lb);
    cr_assert_eq(memcmp(da, db, la), 0, "%s differs", names[i]);
    char part[256];
    snprintf(part, sizeof part, "%s.part", b);
    cr_assert_neq(access(part, F_OK), 0, "%s was left behind", part);
    free(da);
    free(db);
    free(a);
    free(b);
  }
  flrt_datasets d;
  cr_assert_eq(flrt_read_data_sets(received, 10, &d, err, sizeof err), 0, "%s", err);
  cr_assert_eq(d.train.n, 30);
  cr_assert_eq(d.validation.n, 10);
  cr_assert_eq(d.test.n, 9);
  cr_assert_eq(d.test.labels[4], rtt_label(4, 1));
  flrt_free_data_sets(&d);
}

Test(download, trailing_slash_and_missing_directory_are_handled) {
  rtt_write_mnist_dir(served, 1, 5, 5, 2, 2);
  start_server();
  char *url = base_url("/");
  char *sub = rtt_path(received, "fresh");
  cr_assert_eq(flrt_download_mnist(url, sub, err, sizeof err), 0, "%s", err);
  flrt_datasets d;
  cr_assert_eq(flrt_read_data_sets(sub, 0, &d, err, sizeof err), 0, "%s", err);
  flrt_free_data_sets(&d);
  free(sub);
  free(url);
}

Test(download, http_404_names_url_and_error) {
  rtt_write_mnist_dir(served, 1, 5, 5, 2, 2);
  char *gone = rtt_path(served, "t10k-images-idx3-ubyte.gz");
  cr_assert_eq(remove(gone), 0);
  free(gone);
  start_server();
  char *url = base_url("");
  cr_assert_eq(flrt_download_mnist(url, received, err, sizeof err), -1);
  char expected_url[256];
  snprintf(expected_url, sizeof expected_url, "%s/t10k-images-idx3-ubyte.gz", url);
  cr_assert_not_null(strstr(err, expected_url), "%s", err);
  cr_assert_not_null(strstr(err, "404"), "%s", err);
  char *part = rtt_path(received, "t10k-images-idx3-ubyte.gz.part");
  char *final = rtt_path(received, "t10k-images-idx3-ubyte.gz");
  cr_assert_neq(access(part, F_OK), 0, "the partial file was left behind");
  cr_assert_neq(access(final, F_OK), 0, "an error page was saved as data");
  free(part);
  free(final);
  free(url);
}

Test(download, unreachable_server_is_reported) {
  port = pick_free_port(); /* nothing listens there */
  char *url = base_url("");
  cr_assert_eq(flrt_download_mnist(url, received, err, sizeof err), -1);
  cr_assert_not_null(strstr(err, url), "%s", err);
  cr_assert_not_null(strstr(err, "failed"), "%s", err);
  free(url);
}
