// kafkajs's producer({ idempotent: true }) against sluice (issue 13).
//
// Sends COUNT records round-robin over PARTITIONS partitions of TOPIC (value
// "<partition>-<sequence within partition>") in sends of a few records each,
// and prints one JSON report on stdout: acked [{partition, offset, value}],
// failed, error. A record's offset is its partition's baseOffset in the send's
// answer plus its position among that send's records for the partition.
//
// Usage: node kafkajs_idempotent_producer.js BOOTSTRAP TOPIC PARTITIONS COUNT
'use strict'

// The records name their partitions, so kafkajs's partitioner change is moot.
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
const { Kafka, logLevel } = require('kafkajs')
const { version } = require('kafkajs/package.json')

const RECORDS_PER_SEND = 10
// The idempotent producer retries without end (its default); this bounds the
// whole run so that a broker that never answers fails the test, not hangs it.
const RUN_TIMEOUT_MS = 60000

async function produce (bootstrap, topic, partitions, count, report) {
  const kafka = new Kafka({
    clientId: 'sluice-tests',
    brokers: [bootstrap],
    logLevel: logLevel.WARN
  })
  const producer = kafka.producer({ idempotent: true })
  await producer.connect()
  try {
    const nextSequence = new Array(partitions).fill(0)
    for (let first = 0; first < count; first += RECORDS_PER_SEND) {
      const messages = []
      for (let index = first; index < Math.min(first + RECORDS_PER_SEND, count); index++) {
        const partition = index % partitions
        messages.push({ partition, value: `${partition}-${nextSequence[partition]++}` })
      }
      const answers = await producer.send({ topic, acks: -1, messages })
      const base = new Map(answers.map(answer => [answer.partition, BigInt(answer.baseOffset)]))
      const position = new Map()
      for (const message of messages) {
        const within = position.get(message.partition) || 0n
        position.set(message.partition, within + 1n)
        const offset = base.get(message.partition) + within
        report.acked.push({ partition: message.partition, offset: Number(offset), value: message.value })
      }
    }
  } finally {
    await producer.disconnect()
  }
}

async function main () {
  const [bootstrap, topic, partitions, count] = process.argv.slice(2)
  const report = { client: `kafkajs ${version}`, acked: [], failed: [], error: null }
  try {
    let timer
    const timeout = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${RUN_TIMEOUT_MS} ms`)), RUN_TIMEOUT_MS)
    })
    try {
      await Promise.race([produce(bootstrap, topic, Number(partitions), Number(count), report), timeout])
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
