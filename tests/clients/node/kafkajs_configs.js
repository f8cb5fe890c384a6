// kafkajs's admin config calls against sluice (issue 14): kafkajs has only
// the legacy AlterConfigs, which replaces a resource's whole override set.
//
// Creates TOPIC with retention.ms and compression.type, replaces its
// overrides with segment.ms alone (alterConfigs), sets the broker's
// log.retention.ms, then describes both, and prints one JSON report on
// stdout: topic {name: [value, source]}, broker {name: value}, error.
//
// Usage: node kafkajs_configs.js BOOTSTRAP TOPIC
'use strict'

const { Kafka, logLevel, ConfigResourceTypes, ConfigSource } = require('kafkajs')
const { version } = require('kafkajs/package.json')

const SOURCE_NAMES = Object.fromEntries(Object.entries(ConfigSource).map(([name, id]) => [id, name]))

async function run (bootstrap, topic, report) {
  const kafka = new Kafka({ clientId: 'sluice-tests', brokers: [bootstrap], logLevel: logLevel.WARN })
  const admin = kafka.admin()
  await admin.connect()
  try {
    await admin.createTopics({
      topics: [{
        topic,
        numPartitions: 1,
        configEntries: [
          { name: 'retention.ms', value: '3600000' },
          { name: 'compression.type', value: 'lz4' }
        ]
      }]
    })
    const altered = await admin.alterConfigs({
      resources: [
        { type: ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'segment.ms', value: '600000' }] },
        { type: ConfigResourceTypes.BROKER, name: '0', configEntries: [{ name: 'log.retention.ms', value: '86400000' }] }
      ]
    })
    for (const resource of altered.resources) {
      if (resource.errorCode !== 0) {
        throw new Error(`alterConfigs ${resource.resourceName}: ${resource.errorCode} ${resource.errorMessage}`)
      }
    }
    const described = await admin.describeConfigs({
      includeSynonyms: true,
      resources: [
        { type: ConfigResourceTypes.TOPIC, name: topic },
        { type: ConfigResourceTypes.BROKER, name: '0', configNames: ['log.retention.ms'] }
      ]
    })
    for (const resource of described.resources) {
      for (const entry of resource.configEntries) {
        if (resource.resourceType === ConfigResourceTypes.TOPIC) {
          report.topic[entry.configName] = [entry.configValue, SOURCE_NAMES[entry.configSource]]
        } else {
          report.broker[entry.configName] = entry.configValue
        }
      }
    }
  } finally {
    await admin.disconnect()
  }
}

async function main () {
  const [bootstrap, topic] = process.argv.slice(2)
  const report = { client: `kafkajs ${version}`, topic: {}, broker: {}, error: null }
  try {
    await run(bootstrap, topic, report)
  } catch (error) {
    report.error = String(error && error.stack ? error.stack : error)
  }
  process.stdout.write(JSON.stringify(report) + '\n')
}

main()
