// kafkajs's transactional producer against sluice (issue 13):
// producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 }),
// then three transactions of COUNT records each, round-robin over
// PARTITIONS partitions of TOPIC: "t0" committed, "t1" aborted, "t2"
// committed. Prints one JSON report on stdout, the shape
// tests/clients/python/txn_report.py describes: client, transactions
// [{label, values, outcome}], errors [{at, name, code, fatal, retriable,
// abortable, message}], error.
//
// Usage: node kafkajs_transactions.js BOOTSTRAP TOPIC PARTITIONS COUNT
'use strict'

// The records name their partitions, so kafkajs's partitioner change is moot.
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
const { Kafka, logLevel } = require('kafkajs')
const { version } = require('kafkajs/package.json')

// kafkajs retries a refused call for a long while; this bounds the whole
// run so that a broker that never serves transactions fails the test, not
// hangs it.
const RUN_TIMEOUT_MS = 60000
const OUTCOMES = ['committed', 'aborted', 'committed']

function messagesOf (label, partitions, count) {
  const within = new Array(partitions).fill(0)
  const messages = []
  for (let index = 0; index < count; index++) {
    const partition = index % partitions
    messages.push({ partition, value: `${label}-${partition}-${within[partition]++}` })
  }
  return messages
}

function describe (at, error) {
  // A KafkaJSNumberOfRetriesExceeded wraps the broker's error as its cause.
  const cause = error.cause || error
  return {
    at,
    name: cause.type || cause.name,
    code: cause.code === undefined ? null : cause.code,
    fatal: false,
    retriable: Boolean(cause.retriable),
    abortable: false,
    message: `${error.name}: ${error.message}` + (cause === error ? '' : ` (cause ${cause.name}: ${cause.message})`)
  }
}

async function run (bootstrap, topic, partitions, count, report) {
  const kafka = new Kafka({
    clientId: 'sluice-tests',
    brokers: [bootstrap],
    logLevel: logLevel.WARN
  })
  const producer = kafka.producer({
    transactionalId: `sluice-tests-${topic}`,
    idempotent: true,
    maxInFlightRequests: 1
  })
  await producer.connect()
  try {
    for (const [number, outcome] of OUTCOMES.entries()) {
      const label = `t${number}`
      const messages = messagesOf(label, partitions, count)
      let at = `${label} transaction`
      try {
        const transaction = await producer.transaction()
        at = `${label} send`
        await transaction.send({ topic, acks: -1, messages })
        at = `${label} ${outcome === 'committed' ? 'commit' : 'abort'}`
        if (outcome === 'committed') {
          await transaction.commit()
        } else {
          await transaction.abort()
        }
      } catch (error) {
        report.errors.push(describe(at, error))
        throw error
      }
      report.transactions.push({ label, values: messages.map(message => message.value), outcome })
    }
  } finally {
    await producer.disconnect()
  }
}

async function main () {
  const [bootstrap, topic, partitions, count] = process.argv.slice(2)
  const report = { client: `kafkajs ${version}`, transactions: [], errors: [], error: null }
  try {
    let timer
    const timeout = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${RUN_TIMEOUT_MS} ms`)), RUN_TIMEOUT_MS)
    })
    try {
      await Promise.race([run(bootstrap, topic, Number(partitions), Number(count), report), timeout])
    } finally {
      clearTimeout(timer)
    }
  } catch (error) {
    report.error = `${error.name}: ${error.message}`
  }
  process.stdout.write(JSON.stringify(report) + '\n')
  // A producer still retrying after the timeout keeps the event loop alive.
  process.exit(0)
}

main()
