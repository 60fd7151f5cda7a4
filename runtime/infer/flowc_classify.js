// flowc_classify.js - the classifier's command line for a flowc model compiled to WebAssembly, under Node.js.
//
// flowc build --infer --target wasm32 -o NAME.wasm writes NAME.js: this file,
// after a first line that names the module (flowcWasmFile). It reads IDX
// files (gzip or plain) and binary PGMs as the C classifier does, writes
// pixels / 255 into the module's input buffer, calls flowc_run() and reads the
// outputs; the output lines have the C classifier's format.
'use strict';
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

const program = path.basename(process.argv[1]);

function fail(message) {
  process.stderr.write(`${program}: ${message}\n`);
  process.exit(1);
}

const wasm = new WebAssembly.Instance(
  new WebAssembly.Module(fs.readFileSync(path.join(__dirname, flowcWasmFile))), {}).exports;
const BATCH = wasm.flowc_batch(), IMAGE = wasm.flowc_input_size(), CLASSES = wasm.flowc_classes();

function usage() {
  return `usage: ${program} IMAGES [LABELS]   IDX files (gzip or plain): the accuracy with LABELS, else each image's class\n` +
    `       ${program} DIR               the test set in DIR (t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)\n` +
    `       ${program} IMAGE.pgm         a binary PGM (P5) of ${IMAGE} pixels: its class and the probabilities\n` +
    'options:\n  --limit K     only the first K images\n' +
    `  --logits      one line per image: its index, class and the model's ${CLASSES} outputs\n` +
    '  --bench K     time K runs on the first image (or a blank one): median milliseconds\n';
}

function readAll(file) {
  let data;
  try {
    data = fs.readFileSync(file);
  } catch (e) {
    fail(`cannot open ${file}: ${e.message}`);
  }
  if (data.length >= 2 && data[0] === 0x1f && data[1] === 0x8b) data = zlib.gunzipSync(data);
  return data;
}

// An IDX file of unsigned bytes: its items, each `item` bytes.
function idxItems(file, wantDims, item) {
  const b = readAll(file);
  if (b.length < 4 || b[0] || b[1] || b[2] !== 0x08) fail(`${file} is not an IDX file of unsigned bytes`);
  const dims = b[3];
  if (dims < 1 || b.length < 4 + 4 * dims) fail(`${file}: truncated IDX header`);
  let per = 1;
  for (let d = 1; d < dims; d++) per *= b.readUInt32BE(4 + 4 * d);
  if ((wantDims === 1 && dims !== 1) || per !== item) fail(`${file} holds items of ${per} values; the model takes ${item}`);
  const count = b.readUInt32BE(4);
  const start = 4 + 4 * dims;
  if ((b.length - start) / per < count) fail(`${file} is truncated`);
  return { count, data: b.subarray(start, start + count * per) };
}

function readPgm(file) {
  const b = readAll(file);
  if (b.length < 2 || b[0] !== 0x50 || b[1] !== 0x35) fail(`${file} is not a binary PGM (P5)`);
  let at = 2;
  const fields = [];
  while (fields.length < 3) {
    while (at < b.length && ' \t\r\n'.includes(String.fromCharCode(b[at]))) at++;
    if (b[at] === 0x23) { while (at < b.length && b[at] !== 0x0a) at++; continue; }
    let v = 0, digits = 0;
    while (at < b.length && b[at] >= 0x30 && b[at] <= 0x39) { v = v * 10 + b[at++] - 0x30; digits++; }
    if (!digits) fail(`${file}: malformed PGM header`);
    fields.push(v);
  }
  at++;
  const [w, h, maxval] = fields;
  if (w * h !== IMAGE) fail(`${file} is ${w}x${h}; the model takes ${IMAGE} pixels`);
  const size = maxval > 255 ? 2 : 1;
  if (b.length < at + IMAGE * size) fail(`${file} is truncated`);
  const image = new Float32Array(IMAGE);
  for (let i = 0; i < IMAGE; i++) image[i] = (size === 2 ? b.readUInt16BE(at + 2 * i) : b[at + i]) / maxval;
  return image;
}

function views() {
  const memory = wasm.memory.buffer;
  return {
    input: new Float32Array(memory, wasm.flowc_input(), BATCH * IMAGE),
    output: new Float32Array(memory, wasm.flowc_output(), BATCH * CLASSES),
  };
}

function argmax(v) {
  let best = 0;
  for (let c = 1; c < v.length; c++) if (v[c] > v[best]) best = c;
  return best;
}

function classify(images, labels, count, logits) {
  const { input, output } = views();
  let correct = 0;
  const start = process.hrtime.bigint();
  for (let first = 0; first < count; first += BATCH) {
    const n = Math.min(BATCH, count - first);
    input.fill(0);
    for (let i = 0; i < n * IMAGE; i++) input[i] = Math.fround(images[first * IMAGE + i] / 255);
    wasm.flowc_run();
    for (let i = 0; i < n; i++) {
      const v = output.subarray(i * CLASSES, (i + 1) * CLASSES);
      const best = argmax(v);
      if (logits) console.log(`${first + i} ${best} ${Array.from(v, (x) => x.toPrecision(9)).join(' ')}`);
      else if (!labels) console.log(`${first + i} ${best}`);
      if (labels && best === labels[first + i]) correct++;
    }
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  if (labels) {
    console.log(`accuracy ${(count ? correct / count : 0).toFixed(4)} (${correct} of ${count} images), ` +
      `${(count ? ms / count : 0).toFixed(4)} ms per image`);
  }
}

function bench(image, runs) {
  const { input, output } = views();
  for (let b = 0; b < BATCH; b++) input.set(image, b * IMAGE);
  for (let i = 0; i < 10; i++) wasm.flowc_run();
  const t = [];
  for (let i = 0; i < runs; i++) {
    const start = process.hrtime.bigint();
    wasm.flowc_run();
    t.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  void output;
  t.sort((a, b) => a - b);
  console.log(`latency_ms ${t[Math.floor(runs / 2)].toFixed(4)} (median of ${runs} runs, batch ${BATCH})`);
}

function count(flag, text) {
  const v = Number(text);
  if (!Number.isInteger(v) || v < 1) fail(`${flag}: expected a positive integer, found '${text === undefined ? '' : text}'`);
  return v;
}

function main(args) {
  const files = [];
  let logits = false, limit = -1, runs = 0;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--help' || a === '-h') { process.stdout.write(usage()); return; }
    else if (a === '--logits') logits = true;
    else if (a === '--limit') limit = count(a, args[++i]);
    else if (a === '--bench') runs = count(a, args[++i]);
    else if (a.startsWith('-') && a.length > 1) { process.stderr.write(usage()); fail(`unknown option '${a}'`); }
    else if (files.length < 2) files.push(a);
    else { process.stderr.write(usage()); fail('too many files'); }
  }
  if (!files.length && !runs) { process.stderr.write(usage()); process.exit(2); }
  let [imagesPath, labelsPath] = files;
  if (imagesPath && fs.existsSync(imagesPath) && fs.statSync(imagesPath).isDirectory()) {
    const inDir = (name) => {
      const plain = path.join(imagesPath, name);
      return fs.existsSync(plain) ? plain : plain + '.gz';
    };
    [imagesPath, labelsPath] = [inDir('t10k-images-idx3-ubyte'), inDir('t10k-labels-idx1-ubyte')];
  }
  if (imagesPath && imagesPath.endsWith('.pgm')) {
    const image = readPgm(imagesPath);
    if (runs) { bench(image, runs); return; }
    const { input, output } = views();
    for (let b = 0; b < BATCH; b++) input.set(image, b * IMAGE);
    wasm.flowc_run();
    const v = Array.from(output.subarray(0, CLASSES));
    let p = v;
    if (!wasm.flowc_probabilities()) {
      const max = Math.max(...v);
      const e = v.map((x) => Math.exp(x - max));
      const sum = e.reduce((a, b) => a + b, 0);
      p = e.map((x) => x / sum);
    }
    console.log(`class ${argmax(v)}`);
    p.forEach((x, c) => console.log(`  ${c}  ${x.toFixed(6)}`));
    return;
  }
  let images = { count: 0, data: new Uint8Array(0) }, labels = null;
  if (imagesPath) {
    images = idxItems(imagesPath, 3, IMAGE);
    if (labelsPath) {
      labels = idxItems(labelsPath, 1, 1);
      if (labels.count < images.count) fail(`${labelsPath} has ${labels.count} labels for ${images.count} images`);
    }
  }
  let n = images.count;
  if (limit > 0 && limit < n) n = limit;
  if (runs) {
    const image = new Float32Array(IMAGE);
    for (let i = 0; i < IMAGE && n; i++) image[i] = images.data[i] / 255;
    bench(image, runs);
  } else {
    classify(images.data, labels ? labels.data : null, n, logits);
  }
}

main(process.argv.slice(2));
