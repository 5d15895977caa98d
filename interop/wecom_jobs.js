#!/usr/bin/env node
// Answers crypto jobs with the official @wecom/crypto package, for the Rust interop test.
// Reads one JSON job per line on stdin, writes one JSON answer per line on stdout, in order.
//   {"op":"encrypt","key":K,"message":M,"id":ID,"random_hex":H} -> {"ok":true,"encrypt":B64}
//   {"op":"decrypt","key":K,"encrypt":B64}                       -> {"ok":true,"message":M,"id":ID,"random_hex":H}
//   {"op":"sign","token":T,"timestamp":TS,"nonce":N,"encrypt":B64} -> {"ok":true,"signature":S}
// A job that throws answers {"ok":false,"error":"..."}.
'use strict';

const readline = require('readline');
const { encrypt, decrypt, getSignature } = require('@wecom/crypto');

function run(job) {
  switch (job.op) {
    case 'encrypt':
      return {
        encrypt: encrypt(job.key, job.message, job.id, Buffer.from(job.random_hex, 'hex')),
      };
    case 'decrypt': {
      const { message, id, random } = decrypt(job.key, job.encrypt);
      return { message, id, random_hex: random.toString('hex') };
    }
    case 'sign':
      return { signature: getSignature(job.token, job.timestamp, job.nonce, job.encrypt) };
    default:
      throw new Error(`unknown op ${job.op}`);
  }
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  if (!line.trim()) return;
  let answer;
  try {
    answer = { ok: true, ...run(JSON.parse(line)) };
  } catch (e) {
    answer = { ok: false, error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
});
