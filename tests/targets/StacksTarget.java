/*
 * A JVM target for snapcore's Java stacks: `java -cp DIR StacksTarget MODE REPORT`.
 * Four named threads: stx-sleeper in Thread.sleep, stx-waiter in a monitor's
 * wait(), stx-spinner in a busy loop, stx-blocked on a synchronized block the
 * main thread holds.  Like the C targets (report.h): "hb PID" after each round
 * of the main loop, a "VIOLATION ..." line when its sleep returns early or is
 * interrupted, both appended to REPORT by path.
 */
import java.io.FileWriter;
import java.io.IOException;

public class StacksTarget {
    static final Object monitor = new Object();
    static final Object held = new Object();
    static volatile long sink;
    static String report;

    static void report(String line) {
        try (FileWriter w = new FileWriter(report, true)) {
            w.write(line + "\n");
        } catch (IOException e) {
            // the test sees the missing heartbeats
        }
    }

    public static void main(String[] args) throws Exception {
        report = args[1];
        Thread sleeper = new Thread(() -> {
            try { Thread.sleep(3_600_000L); } catch (InterruptedException e) { report("VIOLATION interrupted"); }
        }, "stx-sleeper");
        Thread waiter = new Thread(() -> {
            synchronized (monitor) {
                try { monitor.wait(); } catch (InterruptedException e) { report("VIOLATION interrupted"); }
            }
        }, "stx-waiter");
        Thread spinner = new Thread(() -> {
            long x = 0;
            while (true) { x = x * 31 + 7; sink = x; }
        }, "stx-spinner");
        Thread blocked = new Thread(() -> {
            synchronized (held) { sink = 1; }
        }, "stx-blocked");
        spinner.setPriority(Thread.MIN_PRIORITY);
        long pid = ProcessHandle.current().pid();
        synchronized (held) {
            sleeper.start(); waiter.start(); spinner.start(); blocked.start();
            Thread.sleep(300);
            System.out.println("ready");
            System.out.flush();
            while (true) {
                long start = System.nanoTime();
                Thread.sleep(200);
                if (System.nanoTime() - start < 199_000_000L)
                    report("VIOLATION sleep returned early");
                report("hb " + pid);
            }
        }
    }
}
