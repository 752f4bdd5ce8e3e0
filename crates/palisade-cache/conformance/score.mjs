// Counts passes in an http-cache-tests result file, over the tests it ran:
// total and required (tests without a `kind` are required).
import tests from './node_modules/http-cache-tests/tests/index.mjs'
import surrogate from './node_modules/http-cache-tests/tests/surrogate-control.mjs'
import { readFileSync } from 'fs'
tests.push(surrogate)
const results = JSON.parse(readFileSync(process.argv[2]))
let total = 0, pass = 0, req = 0, reqPass = 0
for (const suite of tests) for (const t of suite.tests) {
  if (!(t.id in results)) continue
  total++
  const required = (t.kind || 'required') === 'required'
  if (required) req++
  if (results[t.id] === true) { pass++; if (required) reqPass++ }
}
console.log(JSON.stringify({ total, pass, required: req, requiredPass: reqPass }))
