import com.nanoplus.NanoPlus;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Paths;

/**
 * Runs the JNI bridge on a desktop JVM, as an Android app would call it (no Android needed):
 *   java -Djava.library.path=DIR -cp CLASSES NanoPlusCheck MODEL.param IMAGE.rgba WIDTH HEIGHT
 * IMAGE.rgba: raw RGBA_8888 rows, no padding. Prints one line per detection:
 *   class_id score x1 y1 x2 y2
 */
public final class NanoPlusCheck {
    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: NanoPlusCheck MODEL.param IMAGE.rgba WIDTH HEIGHT");
            System.exit(2);
        }
        int width = Integer.parseInt(args[2]);
        int height = Integer.parseInt(args[3]);
        byte[] bytes = Files.readAllBytes(Paths.get(args[1]));
        ByteBuffer rgba = ByteBuffer.allocateDirect(bytes.length);
        rgba.put(bytes).rewind();
        try (NanoPlus det = new NanoPlus(args[0], 1, "fp32", 0.35f, 0.6f, 100)) {
            System.err.println(det.classNames().length + " classes");
            float[] d = det.detect(rgba, width, height, width * 4);
            for (int i = 0; i + 5 < d.length; i += 6) {
                System.out.printf("%d %.6f %.4f %.4f %.4f %.4f%n", (int) d[i + 5], d[i + 4], d[i], d[i + 1], d[i + 2], d[i + 3]);
            }
        }
        try {
            new NanoPlus("/nonexistent/model.param", 1, "auto", 0.35f, 0.6f, 100);
            System.err.println("no exception for a missing model");
            System.exit(1);
        } catch (IllegalArgumentException e) {
            System.err.println("missing model: " + e.getMessage());
        }
    }
}
