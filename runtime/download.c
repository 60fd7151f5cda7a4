/* download.c - fetches the four MNIST files with libcurl (--download URL). */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "flowc_rt.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

/* A program built without libcurl (-DFLRT_HAVE_CURL=0) still links; only
 * --download is refused. */
#ifndef FLRT_HAVE_CURL
#define FLRT_HAVE_CURL 1
#endif

#if FLRT_HAVE_CURL
#include <curl/curl.h>
#endif

static void download_errorf(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

#if FLRT_HAVE_CURL

static const char *const DOWNLOAD_FILES[4] = {
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
};

/* malloc'd a + sep + b, where sep is "/" unless a already ends in one. */
static char *download_join(const char *a, const char *b, const char *suffix) {
  size_t la = strlen(a), lb = strlen(b), ls = strlen(suffix);
  int slash = la > 0 && a[la - 1] != '/';
  char *s = malloc(la + (size_t)slash + lb + ls + 1);
  if (!s) return NULL;
  memcpy(s, a, la);
  if (slash) s[la] = '/';
  memcpy(s + la + slash, b, lb);
  memcpy(s + la + slash + lb, suffix, ls + 1);
  return s;
}

static int download_file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Fetches url into final_path through part_path, which is renamed only when
 * the transfer completed, so an interrupted download never looks finished. */
static int download_one(CURL *curl, const char *url, const char *part_path,
                        const char *final_path, char *err, size_t errlen) {
  FILE *f = fopen(part_path, "wb");
  if (!f) {
    download_errorf(err, errlen, "cannot create %s: %s", part_path, strerror(errno));
    return -1;
  }
  char curl_error[CURL_ERROR_SIZE];
  curl_error[0] = '\0';
  curl_easy_reset(curl);
  curl_easy_setopt(curl, CURLOPT_URL, url);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, f);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_error);
  curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
  /* Give up on a stalled transfer (under 1 byte/s for a minute) instead of
   * hanging the training program forever. */
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  CURLcode rc = curl_easy_perform(curl);
  int write_failed = ferror(f) != 0;
  int close_failed = fclose(f) != 0;
  if (rc != CURLE_OK) {
    download_errorf(err, errlen, "downloading %s failed: %s", url,
                    curl_error[0] ? curl_error : curl_easy_strerror(rc));
    remove(part_path);
    return -1;
  }
  if (write_failed || close_failed) {
    download_errorf(err, errlen, "downloading %s failed: cannot write %s: %s", url, part_path,
                    strerror(errno));
    remove(part_path);
    return -1;
  }
  if (rename(part_path, final_path) != 0) {
    download_errorf(err, errlen, "downloading %s: cannot rename %s to %s: %s", url, part_path,
                    final_path, strerror(errno));
    remove(part_path);
    return -1;
  }
  return 0;
}

int flrt_download_mnist(const char *base_url, const char *dir, char *err, size_t errlen) {
  if (!dir) dir = ".";
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
    download_errorf(err, errlen, "cannot create the data directory %s: %s", dir,
                    strerror(errno));
    return -1;
  }
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    download_errorf(err, errlen, "cannot initialise libcurl");
    return -1;
  }
  CURL *curl = curl_easy_init();
  if (!curl) {
    curl_global_cleanup();
    download_errorf(err, errlen, "cannot initialise libcurl");
    return -1;
  }
  int status = 0;
  for (int i = 0; i < 4 && status == 0; i++) {
    char *final_path = download_join(dir, DOWNLOAD_FILES[i], "");
    char *part_path = download_join(dir, DOWNLOAD_FILES[i], ".part");
    char *url = download_join(base_url, DOWNLOAD_FILES[i], "");
    if (!final_path || !part_path || !url) {
      download_errorf(err, errlen, "out of memory");
      status = -1;
    } else if (!download_file_exists(final_path)) {
      /* Files already present are kept: a second run with --download does
       * not fetch them again. */
      status = download_one(curl, url, part_path, final_path, err, errlen);
    }
    free(final_path);
    free(part_path);
    free(url);
  }
  curl_easy_cleanup(curl);
  curl_global_cleanup();
  return status;
}

#else /* !FLRT_HAVE_CURL */

int flrt_download_mnist(const char *base_url, const char *dir, char *err, size_t errlen) {
  (void)dir;
  download_errorf(err, errlen,
                  "cannot download from %s: this program was built without libcurl; fetch the "
                  "four MNIST files by hand",
                  base_url);
  return -1;
}

#endif
