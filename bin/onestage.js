#!/usr/bin/env node
'use strict';
// The CLI runs the compiled TypeScript in dist/ (built by `npm install` / `npm run build:ts`).
let cli;
try {
  cli = require('../dist/cli.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && /dist[\\/]cli\.js/.test(err.message)) {
    console.error('onestage: dist/ is missing; run `npm run build:ts` (or `bash scripts/setup.sh`) first');
    process.exit(1);
  }
  throw err;
}
cli.main();
