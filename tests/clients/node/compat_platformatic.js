// @platformatic/kafka against sluice: the compatibility checks of issue 14
// (admin, every codec with headers, consumer groups of both protocols,
// offsets for times). Prints the report compat_report.js describes.
//
// Its zstd codec is Node's zlib zstd, which Node 20 (Debian's) does not
// have, so produce.zstd is reported not exposed there.
//
// Usage: node compat_platformatic.js BOOTSTRAP
'use strict'

const zlib = require('node:zlib')
const {
  Admin,
  Consumer,
  Producer,
  ConfigResourceTypes,
  ConfigSources,
  IncrementalAlterConfigOperationTypes,
  MessagesStreamModes,
  MessagesStreamFallbackModes
} = require('@platformatic/kafka')
const { clientSoftwareVersion: version } = require('@platformatic/kafka')
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

const PREFIX = 'platformatic'
const READ_TIMEOUT_MS = 20000
const RUN_TIMEOUT_MS = 240000

function range (from, count) {
  return Array.from({ length: count }, (_, i) => from + i)
}

class Client {
  constructor (bootstrap) {
    this.base = { clientId: 'sluice-compat', bootstrapBrokers: [bootstrap], timeout: 15000, retries: 2 }
    this.admin = new Admin(this.base)
    this.closing = []
  }

  async stop () {
    for (const closable of this.closing.reverse()) await closable.close(true).catch(() => {})
    await this.admin.close().catch(() => {})
  }

  async create (topic, partitions, configs = {}) {
    await this.admin.createTopics({
      topics: [topic],
      partitions,
      replicas: 1,
      configs: Object.entries(configs).map(([name, value]) => ({ name, value }))
    })
  }

  async partitionsOf (topic) {
    const topics = await this.admin.listTopics()
    if (!topics.includes(topic)) return null
    const metadata = await this.admin.metadata({ topics: [topic], forceUpdate: true })
    return metadata.topics.get(topic).partitionsCount
  }

  async topicConfigs (topic) {
    const [described] = await this.admin.describeConfigs({
      resources: [{ resourceType: ConfigResourceTypes.TOPIC, resourceName: topic }]
    })
    return Object.fromEntries(described.configs.map(config => [config.name, config]))
  }

  async produce (topic, records, { codec = 'none', partition = 0, timestamps } = {}) {
    const producer = new Producer({ ...this.base, compression: codec })
    try {
      await producer.send({
        acks: -1,
        messages: records.map((record, index) => ({
          topic,
          partition,
          key: record.key,
          value: record.value,
          headers: new Map(record.headers.map(([name, value]) => [Buffer.from(name), value])),
          ...(timestamps ? { timestamp: BigInt(timestamps[index]) } : {})
        }))
      })
    } finally {
      await producer.close()
    }
  }

  // A consumer of GROUP on TOPIC: from the group's commit, else the
  // earliest offset; messages collected as they come.
  async consume (group, topic, groupOptions = { sessionTimeout: 10000, heartbeatInterval: 1000 }) {
    const consumer = new Consumer({ ...this.base, groupId: group, ...groupOptions, maxWaitTime: 100 })
    this.closing.push(consumer)
    const stream = await consumer.consume({
      topics: [topic],
      autocommit: false,
      mode: MessagesStreamModes.COMMITTED,
      fallbackMode: MessagesStreamFallbackModes.EARLIEST
    })
    const messages = []
    stream.on('data', message => messages.push(message))
    const errors = []
    stream.on('error', error => {
      const inner = (error.errors || []).map(e => `${e.message}${e.errors ? ` (${e.errors.map(i => i.message).join('; ')})` : ''}`)
      errors.push(`${error.message} ${inner.join('; ')}`.trim())
      process.stderr.write(`compat_platformatic: stream error ${error.stack}\n`)
    })
    return { consumer, stream, messages, errors }
  }

  async read ({ messages, errors }, count) {
    const what = () => `${count} records read (have ${messages.length}; stream errors: ${errors.slice(-1)})`
    // A stream that reported an error has given up: fail at once.
    await waitUntil(() => messages.length >= count || errors.length > 0, READ_TIMEOUT_MS, what())
      .catch(() => { expect(false, what()) })
    expect(messages.length >= count, what())
    return messages.slice(0, count)
  }

  async closeConsumer ({ consumer, stream }) {
    await stream.close()
    await consumer.close()
  }

  async groupOffsets (group, topic) {
    const [answer] = await this.admin.listConsumerGroupOffsets({ groups: [group] })
    const found = {}
    for (const listed of answer.topics.filter(t => t.name === topic)) {
      for (const partition of listed.partitions) {
        if (partition.committedOffset >= 0n) found[partition.partitionIndex] = Number(partition.committedOffset)
      }
    }
    return found
  }
}

async function adminChecks (client, checks) {
  const topic = `${PREFIX}-admin`
  const kafkaConfigsTopic = `${PREFIX}-kafka-configs`

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
    await client.create(kafkaConfigsTopic, 1, configs)
    const found = await client.topicConfigs(kafkaConfigsTopic)
    for (const [name, value] of Object.entries(configs)) {
      expect(name in found, `${name} missing from DescribeConfigs`)
      expectEqual(found[name].value, value, name)
    }
  })
  await checks.run('admin.describe_configs', async () => {
    const found = await client.topicConfigs(topic)
    expectEqual(found['retention.ms'].value, '86400000', 'retention.ms')
    expectEqual(found['retention.ms'].configSource, ConfigSources.TOPIC_CONFIG, 'retention.ms source')
    expectEqual(found['retention.bytes'].configSource, ConfigSources.DEFAULT_CONFIG, 'retention.bytes source')
  })
  await checks.run('admin.alter_configs_incremental', async () => {
    await client.admin.incrementalAlterConfigs({
      resources: [{
        resourceType: ConfigResourceTypes.TOPIC,
        resourceName: topic,
        configs: [
          { name: 'retention.ms', configOperation: IncrementalAlterConfigOperationTypes.SET, value: '3600000' },
          { name: 'cleanup.policy', configOperation: IncrementalAlterConfigOperationTypes.DELETE }
        ]
      }]
    })
    const found = await client.topicConfigs(topic)
    expectEqual(found['retention.ms'].value, '3600000', 'retention.ms after SET')
    expectEqual(found['cleanup.policy'].configSource, ConfigSources.DEFAULT_CONFIG, 'cleanup.policy source after DELETE')
  })
  await checks.run('admin.alter_configs_legacy', async () => {
    await client.admin.alterConfigs({
      resources: [{ resourceType: ConfigResourceTypes.TOPIC, resourceName: topic, configs: [{ name: 'retention.ms', value: '7200000' }] }]
    })
    expectEqual((await client.topicConfigs(topic))['retention.ms'].value, '7200000', 'retention.ms after AlterConfigs')
  })
  await checks.run('admin.create_partitions', async () => {
    await client.admin.createPartitions({ topics: [{ name: topic, count: 5, assignments: [] }] })
    await waitUntil(async () => (await client.partitionsOf(topic)) === 5, 10000, '5 partitions in metadata')
  })
  await checks.run('admin.delete_records', async () => {
    await client.produce(topic, makeRecords('none').slice(0, 10), { partition: 1 })
    const [deleted] = await client.admin.deleteRecords({ topics: [{ name: topic, partitions: [{ partition: 1, offset: 4n }] }] })
    expectEqual(deleted.partitions[0].lowWatermark, 4n, 'low watermark after deleting records before 4')
    const [earliest] = await client.admin.listOffsets({ topics: [{ name: topic, partitions: [{ partitionIndex: 1, timestamp: -2n }] }] })
    expectEqual(earliest.partitions[0].offset, 4n, 'earliest offset')
  })
  await checks.run('admin.delete_topics', async () => {
    await client.admin.deleteTopics({ topics: [topic] })
    await waitUntil(async () => !(await client.admin.listTopics()).includes(topic), 10000, 'topic gone from the topic list')
  })
  await checks.run('admin.describe_log_dirs', async () => {
    const described = await client.admin.describeLogDirs({ topics: [{ name: kafkaConfigsTopic, partitions: [0] }] })
    const text = JSON.stringify(described, (_, v) => (typeof v === 'bigint' ? v.toString() : v))
    expect(text.includes(kafkaConfigsTopic), `topic missing from the log dirs: ${text.slice(0, 300)}`)
  })
  checks.notExposed('admin.describe_topic_partitions', 'the Admin reads topics with Metadata')
}

async function codecChecks (client, checks) {
  for (const codec of CODECS) {
    if (codec === 'zstd' && typeof zlib.zstdCompressSync !== 'function') {
      checks.notExposed('produce.zstd', `runtime: platformatic's zstd is Node's zlib zstd (Node 22.15+), missing in Node ${process.versions.node}`)
      continue
    }
    await checks.run(`produce.${codec}`, async () => {
      const topic = `${PREFIX}-codec-${codec}`
      const records = makeRecords(codec)
      await client.create(topic, 1)
      await client.produce(topic, records, { codec })
      const reader = await client.consume(`${PREFIX}-reader-${codec}`, topic)
      const read = await client.read(reader, records.length)
      await client.closeConsumer(reader)
      read.forEach((message, index) => {
        const want = records[index]
        expectEqual(message.key, want.key, `record ${index} key`)
        expectEqual(message.value || Buffer.alloc(0), want.value, `record ${index} value`)
        const headers = [...message.headers.entries()].map(([name, value]) => [name.toString(), value])
        expectEqual(headers, want.headers, `record ${index} headers`)
      })
    })
  }
}

async function groupChecks (client, checks) {
  const topic = `${PREFIX}-group`
  const group = `${PREFIX}-classic`
  const offsetsGroup = `${PREFIX}-offsets`

  const commit = (consumer, offset, t = topic) =>
    consumer.commit({ offsets: [{ topic: t, partition: 0, offset: BigInt(offset), leaderEpoch: 0 }] })

  // The group admin checks run on members that have joined but not yet
  // read (platformatic reads only with Fetch 13+), so that they do not
  // depend on fetching.
  await checks.run('group.classic', async () => {
    await client.create(topic, 1)
    await client.produce(topic, makeRecords('none').slice(0, GROUP_RECORDS))
    const first = await client.consume(group, topic)
    await checks.run('admin.list_groups', async () => {
      const groups = await client.admin.listGroups()
      expect(groups.has(group), `${group} not listed: ${[...groups.keys()]}`)
      expectEqual(groups.get(group).protocolType, 'consumer', 'protocol type')
    })
    await checks.run('admin.describe_groups', async () => {
      // The member has joined; its SyncGroup may still be on its way.
      const describe = async () => (await client.admin.describeGroups({ groups: [group] })).get(group)
      const described = await waitUntil(async () => {
        const found = await describe()
        return found.state === 'STABLE' && found
      }, 10000, 'the group Stable').catch(() => describe())
      expectEqual([described.state, described.protocolType, described.members.size], ['STABLE', 'consumer', 1], '[state, protocol type, members]')
    })
    const read = await client.read(first, GROUP_RECORDS)
    expectEqual(read.map(m => Number(m.offset)), range(0, GROUP_RECORDS), 'offsets consumed')
    await commit(first.consumer, GROUP_RECORDS)
    await client.closeConsumer(first)
    await client.produce(topic, makeRecords('none').slice(0, GROUP_RESUMED_RECORDS))
    const second = await client.consume(group, topic)
    const resumed = await client.read(second, GROUP_RESUMED_RECORDS)
    expectEqual(resumed.map(m => Number(m.offset)), range(GROUP_RECORDS, GROUP_RESUMED_RECORDS), 'offsets after resuming from the commit')
    await commit(second.consumer, GROUP_RECORDS + GROUP_RESUMED_RECORDS)
    await client.closeConsumer(second)
  })

  // A member commits without reading, then leaves: the group's offsets.
  const committer = await client.consume(offsetsGroup, topic).catch(() => null)
  const committed = committer && await commit(committer.consumer, GROUP_RECORDS + GROUP_RESUMED_RECORDS).then(() => true, () => false)
  if (committer) await client.closeConsumer(committer)
  if (committed) {
    await checks.run('admin.list_group_offsets', async () => {
      expectEqual(await client.groupOffsets(offsetsGroup, topic), { 0: GROUP_RECORDS + GROUP_RESUMED_RECORDS }, 'committed')
    })
    await checks.run('admin.alter_group_offsets', async () => {
      await client.admin.alterConsumerGroupOffsets({ groupId: offsetsGroup, topics: [{ name: topic, partitionOffsets: [{ partition: 0, offset: 3n }] }] })
      expectEqual(await client.groupOffsets(offsetsGroup, topic), { 0: 3 }, 'committed after alter')
    })
    await checks.run('admin.delete_group_offsets', async () => {
      await client.admin.deleteConsumerGroupOffsets({ groupId: offsetsGroup, topics: [{ name: topic, partitionIndexes: [0] }] })
      expectEqual(await client.groupOffsets(offsetsGroup, topic), {}, 'committed after delete')
    })
    await checks.run('admin.delete_groups', async () => {
      await client.admin.deleteGroups({ groups: [offsetsGroup] })
      expect(!(await client.admin.listGroups()).has(offsetsGroup), 'group listed after delete')
    })
  }
  await checks.run('group.consumer_protocol', async () => {
    const topic848 = `${PREFIX}-kip848`
    await client.create(topic848, 2)
    await client.produce(topic848, makeRecords('none').slice(0, GROUP_RECORDS))
    const member = await client.consume(`${PREFIX}-kip848`, topic848, { groupProtocol: 'consumer' })
    const read = await client.read(member, GROUP_RECORDS)
    expectEqual(read.map(m => Number(m.offset)), range(0, GROUP_RECORDS), 'offsets consumed')
    await commit(member.consumer, GROUP_RECORDS, topic848)
    expectEqual((await client.groupOffsets(`${PREFIX}-kip848`, topic848))[0], GROUP_RECORDS, 'committed')
    await client.closeConsumer(member)
  })
}

async function offsetsForTimesCheck (client, checks) {
  await checks.run('offsets_for_times', async () => {
    const topic = `${PREFIX}-times`
    await client.create(topic, 1)
    const timestamps = range(0, TIMESTAMPED_RECORDS).map(i => TIMESTAMP_BASE_MS + i * TIMESTAMP_STEP_MS)
    await client.produce(topic, makeRecords('none').slice(0, TIMESTAMPED_RECORDS), { timestamps })
    const found = []
    for (const timestamp of [TIMESTAMP_BASE_MS + TIMESTAMP_STEP_MS + 1, TIMESTAMP_BASE_MS, timestamps.at(-1) + 1]) {
      const [answer] = await client.admin.listOffsets({
        topics: [{ name: topic, partitions: [{ partitionIndex: 0, timestamp: BigInt(timestamp) }] }]
      })
      found.push(Number(answer.partitions[0].offset))
    }
    // Past the last record Kafka answers offset -1.
    expectEqual(found, [2, 0, -1], 'offsets for (between 1 and 2, the first, after the last)')
  })
}

async function main () {
  const [bootstrap] = process.argv.slice(2)
  const checks = new Checks(`@platformatic/kafka ${version}`)
  const client = new Client(bootstrap)
  const timer = setTimeout(() => {
    checks.finish()
    process.exit(0)
  }, RUN_TIMEOUT_MS)
  try {
    await adminChecks(client, checks)
    await codecChecks(client, checks)
    await groupChecks(client, checks)
    await offsetsForTimesCheck(client, checks)
  } catch (error) {
    process.stderr.write(`compat_platformatic: stopped by ${error.stack}\n`)
  } finally {
    clearTimeout(timer)
    await client.stop()
    checks.finish()
    process.exit(0)
  }
}

main()
