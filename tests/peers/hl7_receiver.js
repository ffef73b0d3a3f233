#!/usr/bin/env node
// An independent HL7 v2 / MLLP receiver for the deliver tests: a stand-in for
// the hospital system, built on npm simple-hl7 (its TCP server parses each
// message and builds the AA with MSA-2 = MSH-10).
//
//   node hl7_receiver.js PORT LOGFILE [MODE,MODE,...] [--match TEXT=MODE ...]
//                        [--tls CERT.pem KEY.pem]
//
// MODE per message, in arrival order (the last one repeats):
//   AA     answer simple-hl7's own ACK (AA)
//   AE/AR  the same ACK with MSA-1 AE / AR
//   wrong  an AA whose MSA-2 is another control id
//   split  the AA written in several TCP writes (16-byte pieces, 10 ms apart)
//   silent never answer
// --match TEXT=MODE overrides the sequence for messages containing TEXT.
// --tls: PORT speaks TLS (node's tls module terminates it and hands the plain
// stream to the simple-hl7 server, which listens on a private loopback port;
// simple-hl7 has no TLS of its own).
// simple-hl7 can only answer with one write, so `split` writes the same ACK
// through the node socket simple-hl7 hands to the handler.
//
// Every received message is appended to LOGFILE as one JSON line:
// {"n": 1, "mode": "AA", "control_id": "...", "message": "<ER7>", "connection": 1}
// (connection: the number of the TCP connection it came on, from 1).
// Prints "listening PORT" on stdout once the port accepts connections.
'use strict';

const fs = require('fs');
const hl7 = require('simple-hl7');

const VT = String.fromCharCode(0x0b);
const FS = String.fromCharCode(0x1c);
const CR = String.fromCharCode(0x0d);

const args = process.argv.slice(2);
const port = parseInt(args[0], 10);
const logFile = args[1];
let sequence = ['AA'];
const matches = [];
let tlsFiles = null;
for (let i = 2; i < args.length; i++) {
  if (args[i] === '--tls') {
    tlsFiles = [args[++i], args[++i]];
  } else if (args[i] === '--match') {
    const rule = args[++i];
    const eq = rule.lastIndexOf('=');
    matches.push([rule.slice(0, eq), rule.slice(eq + 1)]);
  } else {
    sequence = args[i].split(',');
  }
}

let count = 0;
const server = hl7.Server.createTcpServer(function (err, req, res) {
  if (err) {
    console.error('receiver error: ' + err.message);
    return;
  }
  count += 1;
  const raw = req.raw.substring(req.raw.indexOf(VT) + 1, req.raw.length - 2);
  let mode = sequence[Math.min(count, sequence.length) - 1];
  for (const [text, m] of matches) {
    if (raw.includes(text)) { mode = m; break; }
  }
  const controlId = req.msg.header.getField(8).toString();
  fs.appendFileSync(logFile, JSON.stringify({ n: count, mode: mode, control_id: controlId, message: raw,
                                              connection: res.socket.connectionNumber }) + '\n');

  const msa = res.ack.getSegment('MSA');
  if (mode === 'AE' || mode === 'AR') {
    msa.setField(1, mode);
    msa.addField('receiver test mode ' + mode); // MSA-3 text
  } else if (mode === 'wrong') {
    msa.setField(2, 'NOT-' + controlId);
  }
  if (mode === 'silent') return;
  if (mode === 'split') {
    const bytes = Buffer.from(VT + res.ack.toString() + FS + CR, 'utf-8');
    let offset = 0;
    const writeNext = function () {
      res.socket.write(bytes.subarray(offset, offset + 16));
      offset += 16;
      if (offset < bytes.length) setTimeout(writeNext, 10);
    };
    writeNext();
    return;
  }
  res.end();
});

function announce() { process.stdout.write('listening ' + port + '\n'); }

if (tlsFiles) {
  const net = require('net');
  const tls = require('tls');
  server.start(0);
  server.server.on('listening', function () {
    const inner = server.server.address().port;
    const front = tls.createServer({ cert: fs.readFileSync(tlsFiles[0]), key: fs.readFileSync(tlsFiles[1]) },
      function (secure) {
        const plain = net.connect(inner, '127.0.0.1');
        secure.pipe(plain).pipe(secure);
        const end = function () { secure.destroy(); plain.destroy(); };
        secure.on('error', end); plain.on('error', end); secure.on('close', end); plain.on('close', end);
      });
    front.on('tlsClientError', function (e) { console.error('tls client error: ' + e.message); });
    front.listen(port, announce);
  });
} else {
  server.start(port);
  server.server.on('listening', announce);
}
let connections = 0;
server.server.on('connection', function (socket) {
  connections += 1;
  socket.connectionNumber = connections;
});
server.server.on('error', function (e) {
  console.error('listen failed: ' + e.message);
  process.exit(1);
});
process.on('SIGTERM', function () { process.exit(0); });
