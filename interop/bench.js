#!/usr/bin/env node
// Throughput of the official @wecom/crypto package on one callback, for
// crates/wechat-kf/benches/callback_crypto.rs. Usage: node bench.js '<json job>' where the job has
// token, key, corp_id, msg_signature, timestamp, nonce, body, rounds, round_ms.
// The loop does the same job as the Rust side: read Encrypt from the envelope, check the
// signature, decrypt, check the receive_id, read the event fields. Prints
// {"rounds_ops_per_sec":[...]} on stdout.
'use strict';

const { decrypt, getSignature } = require('@wecom/crypto');

const job = JSON.parse(process.argv[2]);
const ENCRYPT_RE = /<Encrypt>\s*(?:<!\[CDATA\[([\s\S]*?)\]\]>|([^<]*))\s*<\/Encrypt>/;
const FIELDS = ['ToUserName', 'CreateTime', 'Event', 'Token', 'OpenKfId'];
const FIELD_RES = FIELDS.map(
  (name) => [name, new RegExp(`<${name}>\\s*(?:<!\\[CDATA\\[([\\s\\S]*?)\\]\\]>|([^<]*))\\s*</${name}>`)],
);

function once() {
  const m = ENCRYPT_RE.exec(job.body);
  if (!m) throw new Error('no Encrypt');
  const encrypt = m[1] !== undefined ? m[1] : m[2];
  const sig = getSignature(job.token, job.timestamp, job.nonce, encrypt);
  if (sig !== job.msg_signature) throw new Error('signature mismatch');
  const { message, id } = decrypt(job.key, encrypt);
  if (id !== job.corp_id) throw new Error('receive_id mismatch');
  const event = {};
  for (const [name, re] of FIELD_RES) {
    const f = re.exec(message);
    if (f) event[name] = f[1] !== undefined ? f[1] : f[2];
  }
  if (event.Event !== 'kf_msg_or_event') throw new Error('wrong event');
  event.CreateTime = Number(event.CreateTime);
  return event;
}

function round(ms) {
  let iterations = 0;
  const start = process.hrtime.bigint();
  const limit = BigInt(ms) * 1000000n;
  let elapsed = 0n;
  while (elapsed < limit) {
    for (let i = 0; i < 256; i += 1) once();
    iterations += 256;
    elapsed = process.hrtime.bigint() - start;
  }
  return iterations / (Number(elapsed) / 1e9);
}

round(500); // warm-up: lets V8 optimise the loop
const rounds = [];
for (let r = 0; r < (job.rounds || 7); r += 1) rounds.push(round(job.round_ms || 300));
process.stdout.write(`${JSON.stringify({ rounds_ops_per_sec: rounds })}\n`);
