import tests from './node_modules/http-cache-tests/tests/index.mjs'
import surrogate from './node_modules/http-cache-tests/tests/surrogate-control.mjs'
import { readFileSync } from 'fs'
tests.push(surrogate)
const results = JSON.parse(readFileSync(process.argv[2]))
console.log('result keys', Object.keys(results).length)
for (const suite of tests) for (const t of suite.tests) {
  const kind = t.kind || 'required'
  if (t.id in results && results[t.id] !== true && (process.argv[3] === 'all' || kind === 'required')) {
    console.log(kind.padEnd(8), t.id, '|', JSON.stringify(results[t.id]).slice(0, 160))
  }
}
