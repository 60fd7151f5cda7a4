/* flowc_wasm.c - the WebAssembly module's exports: buffers that JavaScript fills and reads, and a call of the model.
 *
 * JavaScript cannot pass arrays to a wasm function, only numbers: it writes
 * the input through a Float32Array over the module's memory at flowc_input(),
 * calls flowc_run(), and reads the outputs at flowc_output(). The model's own
 * NAME_infer is exported too, for callers that manage memory themselves. */
#include "flowc_model.h"

enum { IMAGE = FLOWC_MODEL_INPUT_SIZE, CLASSES = FLOWC_MODEL_CLASSES, BATCH = FLOWC_MODEL_BATCH };

static float input[BATCH * IMAGE], output[BATCH * CLASSES];

float *flowc_input(void);
float *flowc_output(void);
int flowc_batch(void);
int flowc_input_size(void);
int flowc_classes(void);
int flowc_probabilities(void);
void flowc_run(void);

float *flowc_input(void) { return input; }
float *flowc_output(void) { return output; }
int flowc_batch(void) { return BATCH; }
int flowc_input_size(void) { return IMAGE; }   /* floats per image */
int flowc_classes(void) { return CLASSES; }    /* outputs per image */
int flowc_probabilities(void) { return FLOWC_MODEL_PROBABILITIES; }
void flowc_run(void) { flowc_model_infer(input, output); }
