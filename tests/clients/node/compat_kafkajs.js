// kafkajs against sluice: the compatibility checks of issue 14 (admin, every
// codec with headers, consumer groups, offsets for times). Prints the report
// compat_report.js describes.
//
// kafkajs has only gzip built in; the other codecs are plug-ins a user
// registers: kafkajs-snappy (the plug-in kafkajs documents), and for LZ4 and
// zstd small adapters over @platformatic/wasm-utils (LZ4 frames, WebAssembly)
// and @mongodb-js/zstd (prebuilt), since the documented plug-ins for those
// are native modules built at install time. kafkajs has no
// IncrementalAlterConfigs, OffsetDelete, DescribeLogDirs or KIP-848 consumer.
//
// Usage: node compat_kafkajs.js BOOTSTRAP
'use strict'

process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1'
const { Kafka, logLevel, CompressionTypes, CompressionCodecs, ConfigResourceTypes } = require('kafkajs')
const { version } = require('kafkajs/package.json')
const { lz4Compress, lz4Decompress } = require('@platformatic/wasm-utils')
const zstd = require('@mongodb-js/zstd')
const {
  CODECS,
  GROUP_RECORDS,
  GROUP_RESUMED_RECORDS,
  TIMESTAMPED_RECORDS,
  TIMESTAMP_STEP_MS,
  TIMESTAMP_BASE_MS,
  Checks,
  expect,
  expectEqual,
  waitUntil,
  makeRecords
} = require('./compat_report')

CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy')
CompressionCodecs[CompressionTypes.LZ4] = () => ({
  async compress (encoder) { return Buffer.from(lz4Compress(encoder.buffer)) },
  async decompress (buffer) { return Buffer.from(lz4Decompress(buffer)) }
})
CompressionCodecs[CompressionTypes.ZSTD] = () => ({
  async compress (encoder) { return zstd.compress(encoder.buffer, 3) },
  async decompress (buffer) { return zstd.decompress(buffer) }
})

const PREFIX = 'kafkajs'
const READ_TIMEOUT_MS = 20000
const RUN_TIMEOUT_MS = 240000
const COMPRESSION = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD
}
// DescribeConfigs' config_source for a topic override and for a default.
const DYNAMIC_TOPIC_CONFIG = 1
const DEFAULT_CONFIG = 5

// kafkajs represents headers as an object; a repeated name becomes an array.
function headersObject (headers) {
  const object = {}
  for (const [name, value] of headers) {
    if (name in object) object[name] = [].concat(object[name], value)
    else object[name] = value
  }
  return object
}

class Client {
  constructor (bootstrap) {
    this.kafka = new Kafka({ clientId: 'sluice-compat', brokers: [bootstrap], logLevel: logLevel.NOTHING })
    this.admin = this.kafka.admin()
    this.producer = this.kafka.producer()
    this.consumers = []
  }

  async start () {
    await this.admin.connect()
    await this.producer.connect()
  }

  async stop () {
    for (const consumer of this.consumers) await consumer.disconnect().catch(() => {})
    await this.producer.disconnect()
    await this.admin.disconnect()
  }

  async create (topic, numPartitions, configs = {}) {
    const configEntries = Object.entries(configs).map(([name, value]) => ({ name, value }))
    await this.admin.createTopics({ topics: [{ topic, numPartitions, replicationFactor: 1, configEntries }] })
  }

  async partitionsOf (topic) {
    const topics = await this.admin.listTopics()
    if (!topics.includes(topic)) return null
    const { topics: [described] } = await this.admin.fetchTopicMetadata({ topics: [topic] })
    return described.partitions.length
  }

  async topicConfigs (topic) {
    const { resources: [resource] } = await this.admin.describeConfigs({
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic }],
      includeSynonyms: false
    })
    expect(resource.errorCode === 0, `DescribeConfigs ${topic}: ${resource.errorMessage}`)
    return Object.fromEntries(resource.configEntries.map(entry => [entry.configName, entry]))
  }

  async produce (topic, records, { codec = 'none', partition = 0, timestamps } = {}) {
    const messages = records.map((record, index) => ({
      key: record.key,
      value: record.value,
      headers: headersObject(record.headers),
      partition,
      ...(timestamps ? { timestamp: String(timestamps[index]) } : {})
    }))
    await this.producer.send({ topic, acks: -1, compression: COMPRESSION[codec], messages })
  }

  // A consumer of GROUP on TOPIC from the beginning, collecting messages.
  async consume (group, topic) {
    const consumer = this.kafka.consumer({ groupId: group, sessionTimeout: 10000, heartbeatInterval: 1000, maxWaitTimeInMs: 100 })
    this.consumers.push(consumer)
    const messages = []
    await consumer.connect()
    await consumer.subscribe({ topic, fromBeginning: true })
    await consumer.run({ autoCommit: false, eachMessage: async ({ partition, message }) => { messages.push({ partition, ...message }) } })
    return { consumer, messages }
  }

  async read (messages, count) {
    await waitUntil(() => messages.length >= count, READ_TIMEOUT_MS, `${count} records read (have ${messages.length})`)
    return messages.slice(0, count)
  }

  async groupOffsets (group, topic) {
    const [answer] = await this.admin.fetchOffsets({ groupId: group, topics: [topic] })
    return Object.fromEntries(answer.partitions.filter(p => p.offset !== '-1').map(p => [p.partition, Number(p.offset)]))
  }
}

async function adminChecks (client, checks) {
  const topic = `${PREFIX}-admin`

  await checks.run('admin.create_topic', async () => {
    await client.create(topic, 3, { 'retention.ms': '86400000', 'cleanup.policy': 'delete' })
    await waitUntil(async () => (await client.partitionsOf(topic)) === 3, 10000, '3 partitions in metadata')
  })
  await checks.run('admin.create_topic_kafka_configs', async () => {
    const configs = {
      'min.insync.replicas': '1',
      'segment.ms': '3600000',
      'unclean.leader.election.enable': 'false',
      'max.message.bytes': '2097164',
      'compression.type': 'producer'
    }
    await client.create(`${PREFIX}-kafka-configs`, 1, configs)
    const found = await client.topicConfigs(`${PREFIX}-kafka-configs`)
    for (const [name, value] of Object.entries(configs)) {
      expect(name in found, `${name} missing from DescribeConfigs`)
      expectEqual(found[name].configValue, value, name)
    }
  })
  await checks.run('admin.describe_configs', async () => {
    const found = await client.topicConfigs(topic)
    expectEqual(found['retention.ms'].configValue, '86400000', 'retention.ms')
    expectEqual(found['retention.ms'].configSource, DYNAMIC_TOPIC_CONFIG, 'retention.ms source')
    expectEqual(found['retention.bytes'].configSource, DEFAULT_CONFIG, 'retention.bytes source')
  })
  checks.notExposed('admin.alter_configs_incremental', 'kafkajs has only AlterConfigs (no IncrementalAlterConfigs)')
  await checks.run('admin.alter_configs_legacy', async () => {
    await client.admin.alterConfigs({
      validateOnly: false,
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'retention.ms', value: '7200000' }] }]
    })
    expectEqual((await client.topicConfigs(topic))['retention.ms'].configValue, '7200000', 'retention.ms after AlterConfigs')
  })
  await checks.run('admin.create_partitions', async () => {
    await client.admin.createPartitions({ topicPartitions: [{ topic, count: 5 }] })
    await waitUntil(async () => (await client.partitionsOf(topic)) === 5, 10000, '5 partitions in metadata')
  })
  await checks.run('admin.delete_records', async () => {
    await client.produce(topic, makeRecords('none').slice(0, 10), { partition: 1 })
    await client.admin.deleteTopicRecords({ topic, partitions: [{ partition: 1, offset: '4' }] })
    const offsets = await client.admin.fetchTopicOffsets(topic)
    const one = offsets.find(p => p.partition === 1)
    expectEqual([one.low, one.high], ['4', '10'], 'partition 1 [low, high] after deleting records before 4')
  })
  await checks.run('admin.delete_topics', async () => {
    await client.admin.deleteTopics({ topics: [topic] })
    await waitUntil(async () => !(await client.admin.listTopics()).includes(topic), 10000, 'topic gone from the topic list')
  })
  checks.notExposed('admin.describe_log_dirs', 'no DescribeLogDirs in kafkajs')
  checks.notExposed('admin.describe_topic_partitions', 'kafkajs reads topics with Metadata')
}

async function codecChecks (client, checks) {
  for (const codec of CODECS) {
    await checks.run(`produce.${codec}`, async () => {
      const topic = `${PREFIX}-codec-${codec}`
      const records = makeRecords(codec)
      await client.create(topic, 1)
      await client.produce(topic, records, { codec })
      const { consumer, messages } = await client.consume(`${PREFIX}-reader-${codec}`, topic)
      const read = await client.read(messages, records.length)
      await consumer.disconnect()
      expectEqual(read.length, records.length, 'records read back')
      read.forEach((message, index) => {
        const want = records[index]
        expectEqual(message.key, want.key, `record ${index} key`)
        expectEqual(message.value || Buffer.alloc(0), want.value, `record ${index} value`)
        expectEqual(message.headers, headersObject(want.headers), `record ${index} headers`)
      })
    })
  }
}

async function groupChecks (client, checks) {
  const topic = `${PREFIX}-group`
  const group = `${PREFIX}-classic`

  const classic = await checks.run('group.classic', async () => {
    await client.create(topic, 1)
    await client.produce(topic, makeRecords('none').slice(0, GROUP_RECORDS))
    const first = await client.consume(group, topic)
    const read = await client.read(first.messages, GROUP_RECORDS)
    expectEqual(read.map(m => Number(m.offset)), [...Array(GROUP_RECORDS).keys()], 'offsets consumed')
    await first.consumer.commitOffsets([{ topic, partition: 0, offset: String(GROUP_RECORDS) }])
    await checks.run('admin.list_groups', async () => {
      const { groups } = await client.admin.listGroups()
      const ours = groups.find(g => g.groupId === group)
      expect(ours, `${group} not listed: ${groups.map(g => g.groupId)}`)
      expectEqual(ours.protocolType, 'consumer', 'protocol type')
    })
    await checks.run('admin.describe_groups', async () => {
      const { groups: [described] } = await client.admin.describeGroups([group])
      expectEqual([described.state, described.protocolType, described.members.length], ['Stable', 'consumer', 1], '[state, protocol type, members]')
    })
    await first.consumer.disconnect()
    await client.produce(topic, makeRecords('none').slice(0, GROUP_RESUMED_RECORDS))
    const second = await client.consume(group, topic)
    const resumed = await client.read(second.messages, GROUP_RESUMED_RECORDS)
    const expected = Array.from({ length: GROUP_RESUMED_RECORDS }, (_, i) => GROUP_RECORDS + i)
    expectEqual(resumed.map(m => Number(m.offset)), expected, 'offsets after resuming from the commit')
    await second.consumer.commitOffsets([{ topic, partition: 0, offset: String(GROUP_RECORDS + GROUP_RESUMED_RECORDS) }])
    await second.consumer.disconnect()
  })
  if (classic) {
    await checks.run('admin.list_group_offsets', async () => {
      expectEqual(await client.groupOffsets(group, topic), { 0: GROUP_RECORDS + GROUP_RESUMED_RECORDS }, 'committed')
    })
    await checks.run('admin.alter_group_offsets', async () => {
      await client.admin.setOffsets({ groupId: group, topic, partitions: [{ partition: 0, offset: '3' }] })
      expectEqual(await client.groupOffsets(group, topic), { 0: 3 }, 'committed after setOffsets')
    })
    checks.notExposed('admin.delete_group_offsets', 'no OffsetDelete in kafkajs')
    await checks.run('admin.delete_groups', async () => {
      await client.admin.deleteGroups([group])
      const { groups } = await client.admin.listGroups()
      expect(!groups.some(g => g.groupId === group), 'group listed after delete')
    })
  }
  checks.notExposed('group.consumer_protocol', 'kafkajs has no KIP-848 consumer')
}

async function offsetsForTimesCheck (client, checks) {
  await checks.run('offsets_for_times', async () => {
    const topic = `${PREFIX}-times`
    await client.create(topic, 1)
    const timestamps = Array.from({ length: TIMESTAMPED_RECORDS }, (_, i) => TIMESTAMP_BASE_MS + i * TIMESTAMP_STEP_MS)
    await client.produce(topic, makeRecords('none').slice(0, TIMESTAMPED_RECORDS), { timestamps })
    const found = []
    for (const timestamp of [TIMESTAMP_BASE_MS + TIMESTAMP_STEP_MS + 1, TIMESTAMP_BASE_MS, timestamps.at(-1) + 1]) {
      const [answer] = await client.admin.fetchTopicOffsetsByTimestamp(topic, timestamp)
      found.push(Number(answer.offset))
    }
    // Past the last record kafkajs answers the high watermark.
    expectEqual(found, [2, 0, TIMESTAMPED_RECORDS], 'offsets for (between 1 and 2, the first, after the last)')
  })
}

async function main () {
  const [bootstrap] = process.argv.slice(2)
  const checks = new Checks(`kafkajs ${version}`)
  const client = new Client(bootstrap)
  const timer = setTimeout(() => {
    checks.finish()
    process.exit(0)
  }, RUN_TIMEOUT_MS)
  try {
    await client.start()
    await adminChecks(client, checks)
    await codecChecks(client, checks)
    await groupChecks(client, checks)
    await offsetsForTimesCheck(client, checks)
  } catch (error) {
    process.stderr.write(`compat_kafkajs: stopped by ${error.stack}\n`)
  } finally {
    clearTimeout(timer)
    await client.stop().catch(() => {})
    checks.finish()
    // A consumer still retrying keeps the event loop alive.
    process.exit(0)
  }
}

main()
