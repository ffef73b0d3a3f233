#!/usr/bin/env node
// A second independent HL7 v2 / MLLP receiver for the deliver tests, built on
// npm node-hl7-server (it parses each message with node-hl7-client and builds
// the ACK with MSA-2 = MSH-10 itself).
//
//   node hl7_server_receiver.js PORT LOGFILE [MODE,MODE,...]
//
// MODE per message, in arrival order (the last one repeats): AA, AE or AR
// (node-hl7-server's own ACK with that MSA-1).
//
// LOGFILE gets one JSON line per message handed to the application:
//   {"n": 1, "mode": "AA", "control_id": "<MSH-10 as node-hl7-server parsed it>",
//    "message": "<the text node-hl7-server parsed>", "connection": 1}
// (connection: the number of the TCP connection it came on, from 1).
// Prints "listening PORT" on stdout once the port accepts connections.
'use strict';

const fs = require('fs');
const { Server } = require('node-hl7-server');

const args = process.argv.slice(2);
const port = parseInt(args[0], 10);
const logFile = args[1];
const sequence = (args[2] || 'AA').split(',');

const log = (entry) => fs.appendFileSync(logFile, JSON.stringify(entry) + '\n');

let count = 0;
let connections = 0;
// node-hl7-server hands the handler the parsed message only; the text it
// parsed is emitted just before as 'data.raw', on the same tick.
let lastRaw = '';
let lastConnection = 0;

const server = new Server({ bindAddress: '127.0.0.1' });
const inbound = server.createInbound({ port: port }, async (req, res) => {
  count += 1;
  const mode = sequence[Math.min(count, sequence.length) - 1];
  const message = req.getMessage();
  log({ n: count, mode: mode, control_id: message.get('MSH.10').toString(), message: lastRaw,
        connection: lastConnection });
  await res.sendResponse(mode);
});
inbound.on('client.connect', (socket) => {
  connections += 1;
  const n = connections;
  // before node-hl7-server's own 'data' listener, which calls the handler
  socket.prependListener('data', () => { lastConnection = n; });
});
inbound.on('data.raw', (raw) => { lastRaw = raw; });
inbound.on('data.error', (err) => { console.error('receiver parse error: ' + err.message); });
inbound.on('listen', () => { process.stdout.write('listening ' + port + '\n'); });
inbound.on('error', (e) => {
  console.error('listen failed: ' + e.message);
  process.exit(1);
});
process.on('SIGTERM', () => { process.exit(0); });
