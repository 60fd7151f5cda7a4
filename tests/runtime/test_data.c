/* test_data.c - IDX reading and read_data_sets: good files, and every way a file can be bad. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "flowc_rt.h"
#include "rt_test_util.h"

static char *dir;
static char err[2048];

static void setup(void) {
  dir = rtt_make_temp_dir();
  err[0] = '\0';
}

static void teardown(void) {
  rtt_remove_tree(dir);
  free(dir);
}

TestSuite(data, .init = setup, .fini = teardown);

static void check_split(const flrt_split *s, int64_t n, int64_t first, int test_split,
                        int64_t features) {
  cr_assert_eq(s->n, n);
  cr_assert_eq(s->features, features);
  cr_assert_eq(s->classes, 10);
  for (int64_t i = 0; i < n; i++) {
    cr_assert_eq(s->labels[i], rtt_label(first + i, test_split), "label %lld", (long long)i);
    for (int64_t j = 0; j < features; j++)
      cr_assert_eq(s->pixels[i * features + j], rtt_pixel(first + i, j, test_split),
                   "pixel %lld of example %lld", (long long)j, (long long)i);
  }
}

static int load(int64_t validation, flrt_datasets *d) {
  return flrt_read_data_sets(dir, validation, d, err, sizeof err);
}

/* Loading must fail, with every fragment in the message. */
static void expect_refusal(const char *const *fragments, int n) {
  flrt_datasets d;
  cr_assert_eq(load(0, &d), -1, "a bad data set was accepted");
  cr_assert_null(d.train.pixels);
  for (int i = 0; i < n; i++)
    cr_assert_not_null(strstr(err, fragments[i]), "message lacks '%s': %s", fragments[i], err);
}

Test(data, reads_gzipped_files) {
  rtt_write_mnist_dir(dir, 1, 30, 12, 4, 3);
  flrt_datasets d;
  cr_assert_eq(load(0, &d), 0, "%s", err);
  check_split(&d.train, 30, 0, 0, 12);
  check_split(&d.test, 12, 0, 1, 12);
  cr_assert_eq(d.validation.n, 0);
  flrt_free_data_sets(&d);
  cr_assert_null(d.train.pixels);
}

Test(data, reads_plain_files_under_names_without_gz) {
  rtt_write_mnist_dir(dir, 0, 20, 5, 28, 28);
  flrt_datasets d;
  cr_assert_eq(load(0, &d), 0, "%s", err);
  check_split(&d.train, 20, 0, 0, 784);
  check_split(&d.test, 5, 0, 1, 784);
  flrt_free_data_sets(&d);
}

Test(data, reads_plain_bytes_under_gz_names) {
  /* zlib reads non-gzip data transparently: a file someone gunzipped but kept
   * the name of still loads. */
  rtt_write_mnist_dir(dir, 0, 10, 10, 2, 2);
  const char *names[4] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"};
  for (int i = 0; i < 4; i++) {
    char gzname[64];
    snprintf(gzname, sizeof gzname, "%s.gz", names[i]);
    char *from = rtt_path(dir, names[i]), *to = rtt_path(dir, gzname);
    cr_assert_eq(rename(from, to), 0);
    free(from);
    free(to);
  }
  flrt_datasets d;
  cr_assert_eq(load(0, &d), 0, "%s", err);
  check_split(&d.train, 10, 0, 0, 4);
  flrt_free_data_sets(&d);
}

Test(data, first_examples_become_validation) {
  rtt_write_mnist_dir(dir, 1, 30, 4, 2, 2);
  flrt_datasets d;
  cr_assert_eq(load(12, &d), 0, "%s", err);
  check_split(&d.validation, 12, 0, 0, 4);
  check_split(&d.train, 18, 12, 0, 4);
  check_split(&d.test, 4, 0, 1, 4);
  flrt_free_data_sets(&d);
}

Test(data, validation_is_clamped_to_leave_one_training_example) {
  rtt_write_mnist_dir(dir, 1, 7, 4, 2, 2);
  flrt_datasets d;
  cr_assert_eq(load(1000, &d), 0, "%s", err);
  check_split(&d.validation, 6, 0, 0, 4);
  check_split(&d.train, 1, 6, 0, 4);
  flrt_free_data_sets(&d);
  cr_assert_eq(load(-5, &d), 0, "%s", err);
  cr_assert_eq(d.validation.n, 0);
  cr_assert_eq(d.train.n, 7);
  flrt_free_data_sets(&d);
}

Test(data, missing_file_names_path_files_and_sources) {
  rtt_write_mnist_dir(dir, 1, 5, 5, 2, 2);
  char *p = rtt_path(dir, "t10k-images-idx3-ubyte.gz");
  cr_assert_eq(remove(p), 0);
  const char *fragments[] = {p,
                             "train-images-idx3-ubyte.gz",
                             "train-labels-idx1-ubyte.gz",
                             "t10k-images-idx3-ubyte.gz",
                             "t10k-labels-idx1-ubyte.gz",
                             "http://yann.lecun.com/exdb/mnist/",
                             "--download URL",
                             "dataset-fashion-mnist",
                             "/usr/share/datasets/fashion-mnist"};
  expect_refusal(fragments, 9);
  cr_assert_null(strchr(err, '\n'), "the message must be one line");
  free(p);
}

Test(data, empty_directory_and_missing_directory) {
  const char *fragments[] = {"train-images-idx3-ubyte.gz", "yann.lecun.com"};
  expect_refusal(fragments, 2);
  flrt_datasets d;
  char *nowhere = rtt_path(dir, "does-not-exist");
  cr_assert_eq(flrt_read_data_sets(nowhere, 0, &d, err, sizeof err), -1);
  cr_assert_not_null(strstr(err, nowhere), "%s", err);
  free(nowhere);
}

Test(data, wrong_magic_is_refused) {
  rtt_write_mnist_dir(dir, 1, 5, 5, 2, 2);
  /* A label file where the images belong. */
  char *p = rtt_path(dir, "train-images-idx3-ubyte.gz");
  uint32_t dims[1] = {5};
  unsigned char labels[5] = {0, 1, 2, 3, 4};
  rtt_write_idx(p, 1, 0x801, dims, 1, labels, 5);
  const char *fragments[] = {p, "magic", "0x00000801", "0x00000803"};
  expect_refusal(fragments, 4);
  free(p);
}

Test(data, wrong_magic_in_label_file_is_refused) {
  rtt_write_mnist_dir(dir, 0, 5, 5, 2, 2);
  char *p = rtt_path(dir, "t10k-labels-idx1-ubyte");
  uint32_t dims[1] = {5};
  unsigned char labels[5] = {0, 1, 2, 3, 4};
  rtt_write_idx(p, 0, 0x12345678, dims, 1, labels, 5);
  const char *fragments[] = {p, "0x12345678", "0x00000801"};
  expect_refusal(fragments, 3);
  free(p);
}

static void write_truncated_images(int gz) {
  rtt_write_mnist_dir(dir, gz, 5, 5, 2, 2);
  char *p = rtt_path(dir, gz ? "train-images-idx3-ubyte.gz" : "train-images-idx3-ubyte");
  uint32_t dims[3] = {5, 2, 2};
  unsigned char pixels[13] = {0};
  rtt_write_idx(p, gz, 0x803, dims, 3, pixels, 13); /* 20 promised, 13 present */
  char expected[512];
  snprintf(expected, sizeof expected,
           "file %s: truncated: expected 20 bytes of image data, found 13", p);
  const char *fragments[] = {expected};
  expect_refusal(fragments, 1);
  free(p);
}

Test(data, truncated_plain_file_is_refused_with_counts) { write_truncated_images(0); }

Test(data, truncated_gzip_content_is_refused_with_counts) { write_truncated_images(1); }

Test(data, truncated_header_is_refused) {
  rtt_write_mnist_dir(dir, 0, 5, 5, 2, 2);
  char *p = rtt_path(dir, "train-labels-idx1-ubyte");
  rtt_write_file(p, "\0\0\x08", 3);
  const char *fragments[] = {p, "truncated: expected 4 bytes of header, found 3"};
  expect_refusal(fragments, 2);
  char *q = rtt_path(dir, "train-images-idx3-ubyte");
  rtt_write_file(q, "\0\0\x08\x03\0\0\0\x05\0\0", 10);
  const char *fragments2[] = {q, "truncated: expected 16 bytes of header, found 10"};
  expect_refusal(fragments2, 2);
  free(q);
  free(p);
}

Test(data, gzip_file_cut_short_is_refused) {
  rtt_write_mnist_dir(dir, 1, 200, 5, 28, 28);
  char *p = rtt_path(dir, "train-images-idx3-ubyte.gz");
  size_t len;
  unsigned char *bytes = rtt_read_file(p, &len);
  /* Every cut of the compressed stream must be refused, none may crash. */
  for (size_t cut = 1; cut < len; cut += (cut < 64 ? 1 : 97)) {
    rtt_write_file(p, bytes, cut);
    flrt_datasets d;
    cr_assert_eq(load(0, &d), -1, "file cut at %zu of %zu bytes was accepted", cut, len);
    cr_assert_not_null(strstr(err, p), "%s", err);
  }
  free(bytes);
  free(p);
}

Test(data, corrupt_gzip_checksum_is_refused) {
  rtt_write_mnist_dir(dir, 1, 50, 5, 4, 4);
  char *p = rtt_path(dir, "train-labels-idx1-ubyte.gz");
  size_t len;
  unsigned char *bytes = rtt_read_file(p, &len);
  /* The gzip trailer is CRC32 then size; damage the CRC only. Every byte of
   * data still decompresses, so only the trailer check can notice. */
  bytes[len - 8] ^= 0x5a;
  rtt_write_file(p, bytes, len);
  const char *fragments[] = {p, "corrupt gzip data"};
  expect_refusal(fragments, 2);
  free(bytes);
  free(p);
}

Test(data, corrupt_gzip_stream_is_refused) {
  rtt_write_mnist_dir(dir, 1, 300, 5, 28, 28);
  char *p = rtt_path(dir, "train-images-idx3-ubyte.gz");
  size_t len;
  unsigned char *bytes = rtt_read_file(p, &len);
  unsigned char *damaged = malloc(len);
  cr_assert_not_null(damaged);
  /* Flip bytes throughout the deflate data (after the 10-byte gzip header). */
  for (size_t at = 10; at < len; at += len / 23 + 1) {
    memcpy(damaged, bytes, len);
    damaged[at] ^= 0xff;
    rtt_write_file(p, damaged, len);
    flrt_datasets d;
    cr_assert_eq(load(0, &d), -1, "flipping byte %zu of %zu was not noticed", at, len);
    cr_assert_not_null(strstr(err, p), "%s", err);
  }
  free(damaged);
  free(bytes);
  free(p);
}

Test(data, image_and_label_counts_must_match) {
  rtt_write_mnist_dir(dir, 1, 6, 5, 2, 2);
  char *p = rtt_path(dir, "train-labels-idx1-ubyte.gz");
  uint32_t dims[1] = {5};
  unsigned char labels[5] = {0, 1, 2, 3, 4};
  rtt_write_idx(p, 1, 0x801, dims, 1, labels, 5);
  const char *fragments[] = {"6 images", "5 labels", p};
  expect_refusal(fragments, 3);
  free(p);
}

Test(data, labels_must_be_digits) {
  rtt_write_mnist_dir(dir, 1, 5, 5, 2, 2);
  char *p = rtt_path(dir, "t10k-labels-idx1-ubyte.gz");
  uint32_t dims[1] = {5};
  unsigned char labels[5] = {0, 1, 2, 10, 4};
  rtt_write_idx(p, 1, 0x801, dims, 1, labels, 5);
  const char *fragments[] = {p, "label 10", "example 3"};
  expect_refusal(fragments, 3);
  free(p);
}

Test(data, train_and_test_image_sizes_must_match) {
  rtt_write_mnist_dir(dir, 1, 5, 5, 2, 2);
  char *p = rtt_path(dir, "t10k-images-idx3-ubyte.gz");
  uint32_t dims[3] = {5, 3, 2};
  unsigned char pixels[30] = {0};
  rtt_write_idx(p, 1, 0x803, dims, 3, pixels, 30);
  const char *fragments[] = {"2x2", "3x2"};
  expect_refusal(fragments, 2);
  free(p);
}

Test(data, absurd_header_counts_fail_as_truncated_without_huge_allocations) {
  rtt_write_mnist_dir(dir, 1, 5, 5, 2, 2);
  char *p = rtt_path(dir, "train-images-idx3-ubyte.gz");
  uint32_t dims[3] = {0x7fffffff, 4096, 4096};
  unsigned char pixels[100] = {0};
  rtt_write_idx(p, 1, 0x803, dims, 3, pixels, 100);
  const char *fragments[] = {p};
  expect_refusal(fragments, 1);
  uint32_t dims2[3] = {1000000, 28, 28};
  rtt_write_idx(p, 1, 0x803, dims2, 3, pixels, 100);
  const char *fragments2[] = {p, "truncated", "expected 784000000 bytes of image data, found 100"};
  expect_refusal(fragments2, 3);
  uint32_t dims3[3] = {0, 28, 28};
  rtt_write_idx(p, 1, 0x803, dims3, 3, pixels, 0);
  const char *fragments3[] = {p, "number of images"};
  expect_refusal(fragments3, 2);
  free(p);
}

Test(data, split_slice_copies_examples_in_order) {
  rtt_write_mnist_dir(dir, 1, 10, 5, 2, 2);
  flrt_datasets d;
  cr_assert_eq(load(0, &d), 0, "%s", err);
  float images[3 * 4], onehot[3 * 10];
  flrt_split_slice(&d.test, 2, 3, images, onehot);
  for (int r = 0; r < 3; r++) {
    for (int j = 0; j < 4; j++) cr_assert_eq(images[r * 4 + j], rtt_pixel(2 + r, j, 1) / 255.0f);
    for (int c = 0; c < 10; c++)
      cr_assert_eq(onehot[r * 10 + c], c == rtt_label(2 + r, 1) ? 1.0f : 0.0f);
  }
  flrt_split_slice(&d.test, 0, 5, NULL, NULL);
  flrt_free_data_sets(&d);
}

/* The real digits shipped beside the repository, when they are there. */
Test(data, real_mnist_digits_10k) {
  const char *root = getenv("FLOWC_SOURCE_ROOT");
  if (!root) cr_skip_test("FLOWC_SOURCE_ROOT is not set");
  char real_dir[4096];
  snprintf(real_dir, sizeof real_dir, "%s/../shared/data/mnist-digits-10k", root);
  struct stat st;
  if (stat(real_dir, &st) != 0) cr_skip_test("no real data in %s", real_dir);

  flrt_datasets d;
  cr_assert_eq(flrt_read_data_sets(real_dir, 0, &d, err, sizeof err), 0, "%s", err);
  cr_assert_eq(d.train.n, 8000);
  cr_assert_eq(d.test.n, 1000);
  cr_assert_eq(d.train.features, 784);
  int counts[10] = {0};
  for (int64_t i = 0; i < d.train.n; i++) {
    cr_assert_lt(d.train.labels[i], 10);
    counts[d.train.labels[i]]++;
  }
  for (int c = 0; c < 10; c++) cr_assert_gt(counts[c], 500, "digit %d: %d examples", c, counts[c]);
  double ink = 0;
  for (int64_t i = 0; i < d.test.n * 784; i++) {
    ink += d.test.pixels[i] / 255.0;
  }
  /* MNIST digits cover roughly 10-15% of the square with ink. */
  double mean_ink = ink / (1000.0 * 784.0);
  cr_assert(mean_ink > 0.05 && mean_ink < 0.25, "mean pixel %g", mean_ink);
  uint8_t first_train_label = d.train.labels[0];
  uint8_t label_5000 = d.train.labels[5000];
  flrt_free_data_sets(&d);

  cr_assert_eq(flrt_read_data_sets(real_dir, 5000, &d, err, sizeof err), 0, "%s", err);
  cr_assert_eq(d.train.n, 3000);
  cr_assert_eq(d.validation.n, 5000);
  cr_assert_eq(d.test.n, 1000);
  cr_assert_eq(d.validation.labels[0], first_train_label);
  cr_assert_eq(d.train.labels[0], label_5000);
  flrt_free_data_sets(&d);
}
