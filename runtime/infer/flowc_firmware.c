/* flowc_firmware.c - the Cortex-M demo firmware: classifies the images baked into it, prints through semihosting.
 *
 * flowc build --infer --target cortex-m4 links this with flowc_startup.c, the
 * linker script flowc_cortex_m4.ld, the generated model and flowc_images.h (the
 * images given with --images, as bytes). Each image prints one line in the
 * format of the host classifier's --logits: its index, its class and the
 * model's outputs, so that the two can be compared line by line. */
#include <stdio.h>

#include "flowc_images.h"
#include "flowc_model.h"

enum { IMAGE = FLOWC_MODEL_INPUT_SIZE, CLASSES = FLOWC_MODEL_CLASSES, BATCH = FLOWC_MODEL_BATCH };

static float input[BATCH * IMAGE], output[BATCH * CLASSES];

int main(void) {
  printf("%s on Cortex-M4: %d image%s\n", FLOWC_MODEL_NAME, FLOWC_IMAGE_COUNT, FLOWC_IMAGE_COUNT == 1 ? "" : "s");
  for (int first = 0; first < FLOWC_IMAGE_COUNT; first += BATCH) {
    int n = FLOWC_IMAGE_COUNT - first < BATCH ? FLOWC_IMAGE_COUNT - first : BATCH;
    for (int i = 0; i < BATCH * IMAGE; i++)
      input[i] = i < n * IMAGE ? flowc_images[first * IMAGE + i] / 255.0f : 0.0f;
    flowc_model_infer(input, output);
    for (int b = 0; b < n; b++) {
      const float *v = output + b * CLASSES;
      int best = 0;
      for (int c = 1; c < CLASSES; c++)
        if (v[c] > v[best]) best = c;
      printf("%d %d", first + b, best);
      for (int c = 0; c < CLASSES; c++) printf(" %.9g", (double)v[c]);
      printf("\n");
    }
  }
  return 0;
}
