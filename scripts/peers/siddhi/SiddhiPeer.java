import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Locale;

import io.siddhi.core.SiddhiAppRuntime;
import io.siddhi.core.SiddhiManager;
import io.siddhi.core.event.Event;
import io.siddhi.core.stream.input.InputHandler;
import io.siddhi.core.stream.output.StreamCallback;

/**
 * Siddhi peer for scripts/bench-peers.sh: runs the harness's "fraud_strict" query
 * (amount < 10, then the NEXT event of the same key amount > 500, within 5 min)
 * on Siddhi 5.1.7 over a JSON-lines file from the harness's gen_events.py, and
 * writes the matches as sorted "key,first_ts,last_ts" lines plus one
 * "RESULT {json}" timing line on stdout, like the Flink harness's FlinkCepPeer.
 *
 * usage: SiddhiPeer --input events.jsonl [--out matches.csv] [--query strict|relaxed] [--explain]
 *
 * Event time: the app is declared @app:playback, and every event is sent with
 * InputHandler.send(ts, data), so Siddhi's clock (and the timestamp that
 * `within` compares) is the event's own ts, not the wall clock.
 * The input must be in ts order (the generator's default, no --ooo-ms): Siddhi
 * has no watermark / reorder step in front of a pattern.
 */
public class SiddhiPeer {

    // strict: Siddhi's sequence (`,`) = the next event of the partition must be b,
    //         the counterpart of Flink's next()/PATTERN (A B) and of our `a next b`.
    // relaxed: the pattern (`->`) form, b may come after any other events
    //         (our `skip none` + `a then b`); only here for manual comparison.
    static final String STRICT =
            "from every s=events[amount < 10], l=events[amount > 500] within 5 min\n";
    static final String RELAXED =
            "from every s=events[amount < 10] -> l=events[amount > 500] within 5 min\n";

    static String app(String from) {
        return "@app:name('fraud_strict')\n"
                + "@app:playback\n"
                + "define stream events (key string, ts long, type string, amount double);\n"
                + "partition with (key of events)\n"
                + "begin\n"
                + "  " + from
                + "  select s.key as key, s.ts as first_ts, l.ts as last_ts\n"
                + "  insert into out;\n"
                + "end;\n";
    }

    public static void main(String[] argv) throws Exception {
        long tMain = System.currentTimeMillis();
        long jvmStart = ManagementFactory.getRuntimeMXBean().getStartTime();
        String input = null, out = null, query = "strict";
        boolean explain = false;
        for (int i = 0; i < argv.length; i++) {
            switch (argv[i]) {
                case "--input": input = argv[++i]; break;
                case "--out": out = argv[++i]; break;
                case "--query": query = argv[++i]; break;
                case "--explain": explain = true; break;
                default:
                    System.err.println("usage: SiddhiPeer --input events.jsonl [--out matches.csv] "
                            + "[--query strict|relaxed] [--explain]");
                    System.exit(2);
            }
        }
        if (input == null) { System.err.println("--input is required"); System.exit(2); }
        String appText = app(query.equals("relaxed") ? RELAXED : STRICT);
        if (explain) System.err.print(appText);

        SiddhiManager manager = new SiddhiManager();
        SiddhiAppRuntime runtime = manager.createSiddhiAppRuntime(appText);
        // The callback runs on the sending thread (no @async), so a plain list is safe.
        List<String> matches = new ArrayList<>();
        runtime.addCallback("out", new StreamCallback() {
            @Override
            public void receive(Event[] events) {
                for (Event e : events) {
                    Object[] d = e.getData();
                    matches.add(d[0] + "," + d[1] + "," + d[2]);
                }
            }
        });
        runtime.start();
        InputHandler in = runtime.getInputHandler("events");
        long tSubmit = System.currentTimeMillis();

        long n = 0;
        try (BufferedReader r = Files.newBufferedReader(Paths.get(input), StandardCharsets.UTF_8)) {
            String line;
            Object[] row;
            while ((line = r.readLine()) != null) {
                if (line.isEmpty()) continue;
                row = parse(line);
                // send(timestamp, data): with @app:playback this ts drives Siddhi's clock.
                in.send((Long) row[1], row);
                n++;
            }
        }
        long tSent = System.currentTimeMillis();
        runtime.shutdown();
        manager.shutdown();
        long tDone = System.currentTimeMillis();

        Collections.sort(matches, SiddhiPeer::compareMatch);
        if (out != null) {
            try (BufferedWriter w = Files.newBufferedWriter(Paths.get(out), StandardCharsets.UTF_8)) {
                for (String m : matches) { w.write(m); w.write('\n'); }
            }
        }
        System.out.println("RESULT " + String.format(Locale.ROOT,
                "{\"engine\":\"siddhi-5.1.7\",\"query\":\"fraud_%s\",\"events\":%d,\"matches\":%d,"
                        + "\"jvm_to_main_ms\":%d,\"setup_ms\":%d,\"exec_ms\":%d,\"shutdown_ms\":%d,"
                        + "\"main_total_ms\":%d}",
                query, n, matches.size(), tMain - jvmStart, tSubmit - tMain, tSent - tSubmit,
                tDone - tSent, tDone - tMain));
        // Exit explicitly: SiddhiAppRuntime.shutdown() leaves a non-daemon
        // "Shutdown-Cleaner" thread that only sleeps (~2 s) before it force-stops
        // executors that are already idle; waiting for it would add ~2 s of idle
        // time to every wall time. All work (incl. shutdown()) is done here.
        System.out.flush();
        System.exit(0);
    }

    /**
     * Minimal parser for the generator's fixed JSON-lines shape
     * {"key":"k00577","ts":1700000000066,"type":"purchase","amount":54.68}
     * (field order free, no escapes in the values). A general JSON library would
     * measure that library more than Siddhi; the Flink peer uses its own fast path too.
     */
    static Object[] parse(String s) {
        return new Object[] {str(s, "\"key\""), Long.parseLong(num(s, "\"ts\"")),
                str(s, "\"type\""), Double.parseDouble(num(s, "\"amount\""))};
    }

    static int valueStart(String s, String field) {
        int i = s.indexOf(field);
        if (i < 0) throw new IllegalArgumentException("no " + field + " in: " + s);
        i = s.indexOf(':', i + field.length()) + 1;
        while (s.charAt(i) == ' ') i++;
        return i;
    }

    static String str(String s, String field) {
        int i = valueStart(s, field);
        if (s.charAt(i) != '"') throw new IllegalArgumentException(field + " is not a string: " + s);
        return s.substring(i + 1, s.indexOf('"', i + 1));
    }

    static String num(String s, String field) {
        int i = valueStart(s, field), j = i;
        while (j < s.length() && ",} ".indexOf(s.charAt(j)) < 0) j++;
        return s.substring(i, j);
    }

    /** Same order as the Flink harness: key (byte order), then first_ts, last_ts numerically. */
    static int compareMatch(String a, String b) {
        String[] x = a.split(","), y = b.split(",");
        int c = x[0].compareTo(y[0]);
        if (c != 0) return c;
        c = Long.compare(Long.parseLong(x[1]), Long.parseLong(y[1]));
        return c != 0 ? c : Long.compare(Long.parseLong(x[2]), Long.parseLong(y[2]));
    }
}
