// Builds a JavaScript plugin into a Veneer component: `node build.mjs SOURCE.js WIT OUT.wasm`.
// StarlingMonkey's optional features (HTTP, fetch, random, clocks, stdio) are left out: the
// contract gives a plugin everything it needs, and each feature would add WASI imports.
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';

const [source, witPath, out] = process.argv.slice(2);
if (!source || !witPath || !out) {
  console.error('usage: node build.mjs SOURCE.js WIT OUT.wasm');
  process.exit(2);
}
const { component } = await componentize(await readFile(source, 'utf8'), {
  sourceName: basename(source),
  witPath,
  worldName: 'personalizer',
  disableFeatures: ['http', 'fetch-event', 'random', 'clocks', 'stdio'],
});
await writeFile(out, component);
console.log(`${out}: ${(component.length / 1048576).toFixed(1)} MiB`);
