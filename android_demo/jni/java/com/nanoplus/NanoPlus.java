package com.nanoplus;

import java.nio.ByteBuffer;

/**
 * A NanoDet-Plus ncnn model with the nanoplus pre- and post-processing (libnanoplus_jni.so).
 *
 * <pre>
 * try (NanoPlus det = new NanoPlus(filesDir + "/model.param", 4, "auto", 0.35f, 0.6f, 100)) {
 *     ByteBuffer rgba = ByteBuffer.allocateDirect(bitmap.getRowBytes() * bitmap.getHeight());
 *     bitmap.copyPixelsToBuffer(rgba);                        // ARGB_8888 bitmaps are RGBA bytes
 *     float[] boxes = det.detect(rgba, bitmap.getWidth(), bitmap.getHeight(), bitmap.getRowBytes());
 *     // 6 floats per detection: x1, y1, x2, y2 (image pixels), score, class id; best first
 * }
 * </pre>
 * The .param needs its .bin beside it, and the sidecar .json where the model has one (copy them
 * out of the APK's assets to a file first). Not thread-safe: one detect at a time per instance.
 */
public final class NanoPlus implements AutoCloseable {
    static {
        System.loadLibrary("nanoplus_jni");
    }

    private long handle;
    private final String[] classNames;

    /** threads 0 = ncnn's default; precision "auto" (ncnn's fp16 where the CPU has it) or "fp32". */
    public NanoPlus(String paramPath, int threads, String precision, float scoreThr, float iouThr, int maxDet) {
        handle = nativeCreate(paramPath, threads, precision, scoreThr, iouThr, maxDet);
        classNames = nativeClassNames(handle);
    }

    public String[] classNames() {
        return classNames.clone();
    }

    public float[] detect(ByteBuffer rgba, int width, int height, int rowStride) {
        return nativeDetectRgba(handle, rgba, width, height, rowStride);
    }

    @Override
    public void close() {
        if (handle != 0) {
            nativeDestroy(handle);
            handle = 0;
        }
    }

    private static native long nativeCreate(String paramPath, int threads, String precision, float scoreThr, float iouThr, int maxDet);

    private static native void nativeDestroy(long handle);

    private static native String[] nativeClassNames(long handle);

    private static native float[] nativeDetectRgba(long handle, ByteBuffer rgba, int width, int height, int rowStride);
}
