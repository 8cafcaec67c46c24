#!/usr/bin/env node
// Reads the raw TAP of a whole tap run and prints the failures, then one line:
// "N passed, N failed". N counts assertions (leaf test points); a subtest that failed without
// a failing assertion (crash, timeout, wrong plan) counts as one failure, and so does a
// non-zero exit of tap with nothing failed. Exits non-zero when anything failed.
import { readFileSync } from 'node:fs';
import { Parser } from 'tap-parser';

const [file, tapStatus = '0'] = process.argv.slice(2);
const tap = readFileSync(file, 'utf8');
const failures = [];
let passed = 0;
let failed = 0;

/** Attach counting to a parser; returns a function giving the failures seen under it. */
function watch(parser, path) {
  let lastChild;
  let childFailures = 0;
  let own = 0;
  parser.on('child', (child) => {
    const counter = watch(child, [...path, child.name]);
    lastChild = { name: child.name, counter };
  });
  parser.on('assert', (a) => {
    if (lastChild && a.name === lastChild.name) {
      const inner = lastChild.counter();
      childFailures += inner;
      lastChild = undefined;
      if (!a.ok && !a.todo && !a.skip && inner === 0) {
        failed += 1;
        own += 1;
        failures.push({ path: [...path, a.name], diag: a.diag });
      }
      return;
    }
    if (a.skip || a.todo) return;
    if (a.ok) passed += 1;
    else {
      failed += 1;
      own += 1;
      failures.push({ path: [...path, a.name], diag: a.diag });
    }
  });
  return () => own + childFailures;
}

const parser = new Parser();
watch(parser, []);
parser.end(tap);

if (failed === 0 && tapStatus !== '0') {
  failed = 1;
  failures.push({ path: [`tap exited with status ${tapStatus}`], diag: undefined });
}
if (passed + failed === 0) {
  failed = 1;
  failures.push({ path: ['no test ran'], diag: undefined });
}
for (const f of failures.slice(0, 50)) {
  process.stdout.write(`not ok: ${f.path.join(' > ')}\n`);
  if (f.diag) {
    const text = JSON.stringify(f.diag, null, 2).split('\n').slice(0, 30).join('\n      ');
    process.stdout.write(`      ${text}\n`);
  }
}
if (failures.length > 50) process.stdout.write(`... and ${failures.length - 50} more failures\n`);
process.stdout.write(`${passed} passed, ${failed} failed\n`);
process.exit(failed === 0 ? 0 : 1);
