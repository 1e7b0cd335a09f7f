// Apache Kafka's own Java clients (kafka-clients, the jars scripts/kafka fetches), for
// tests/test_kafka_protocol.py: they speak the newest versions of the protocol (Produce
// v13 and Fetch v18, which name topics by id; the consumer-group protocol of KIP-848,
// ConsumerGroupHeartbeat), where librdkafka speaks older ones.
//
//   java -cp 'LIB/*' JavaClients.java BOOTSTRAP TOPIC RECORDS GROUP
//
// Produces RECORDS records to TOPIC (acks=all, zstd, client.id "java-producer"), then
// consumes them in GROUP with group.protocol=consumer (client.id "java-consumer"),
// commits, and prints "produced N" and "consumed N".
import java.time.Duration;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class JavaClients {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], topic = args[1], group = args[3];
        int n = Integer.parseInt(args[2]);
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("client.id", "java-producer");
        p.put("acks", "all");
        p.put("compression.type", "zstd");
        p.put("linger.ms", "5");
        try (KafkaProducer<String, String> producer =
                 new KafkaProducer<>(p, new StringSerializer(), new StringSerializer())) {
            for (int i = 0; i < n; i++) {
                producer.send(new ProducerRecord<>(topic, "key-" + i, "java-value-" + i)).get();
            }
        }
        System.out.println("produced " + n);
        Properties c = new Properties();
        c.put("bootstrap.servers", bootstrap);
        c.put("client.id", "java-consumer");
        c.put("group.id", group);
        c.put("group.protocol", "consumer");
        c.put("auto.offset.reset", "earliest");
        c.put("enable.auto.commit", "false");
        int got = 0;
        try (KafkaConsumer<String, String> consumer =
                 new KafkaConsumer<>(c, new StringDeserializer(), new StringDeserializer())) {
            consumer.subscribe(List.of(topic));
            long deadline = System.currentTimeMillis() + 60_000;
            while (got < n && System.currentTimeMillis() < deadline) {
                ConsumerRecords<String, String> records = consumer.poll(Duration.ofMillis(500));
                got += records.count();
            }
            consumer.commitSync();
        }
        System.out.println("consumed " + got);
    }
}
