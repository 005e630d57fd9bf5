// JNI bridge: the nanoplus detector for Java / Kotlin (Android), see java/com/nanoplus/NanoPlus.java.
//
// The Java side owns a handle (a Detector*). Pixels come as a direct ByteBuffer of RGBA_8888 rows
// (Bitmap.copyPixelsToBuffer), so this file needs jni.h only (no Android headers) and is compiled
// and exercised on a desktop JVM too. Detections come back flat: 6 floats per box
// (x1, y1, x2, y2 in image pixels, score, class id), best first.
#include <jni.h>

#include <string>
#include <vector>

#include "detector.h"

namespace {

void throw_java(JNIEnv* env, const char* java_class, const std::string& message) {
    jclass cls = env->FindClass(java_class);
    if (cls) env->ThrowNew(cls, message.c_str());
}

std::string to_string(JNIEnv* env, jstring s) {
    if (!s) return "";
    const char* chars = env->GetStringUTFChars(s, nullptr);
    std::string out(chars ? chars : "");
    if (chars) env->ReleaseStringUTFChars(s, chars);
    return out;
}

nanoplus::Detector* from_handle(JNIEnv* env, jlong handle) {
    if (handle == 0) throw_java(env, "java/lang/IllegalStateException", "NanoPlus: the detector is closed");
    return reinterpret_cast<nanoplus::Detector*>(handle);
}

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_com_nanoplus_NanoPlus_nativeCreate(JNIEnv* env, jclass, jstring param_path, jint threads, jstring precision,
                                                                 jfloat score_thr, jfloat iou_thr, jint max_det) {
    nanoplus::DetectorOptions options;
    options.threads = threads;
    options.precision = to_string(env, precision);
    options.postprocess.score_thr = score_thr;
    options.postprocess.iou_thr = iou_thr;
    options.postprocess.max_det = max_det;
    try {
        return reinterpret_cast<jlong>(new nanoplus::Detector(to_string(env, param_path), options));
    } catch (const std::exception& e) {
        throw_java(env, "java/lang/IllegalArgumentException", e.what());  // names the file and the fix
        return 0;
    }
}

JNIEXPORT void JNICALL Java_com_nanoplus_NanoPlus_nativeDestroy(JNIEnv*, jclass, jlong handle) {
    delete reinterpret_cast<nanoplus::Detector*>(handle);
}

JNIEXPORT jobjectArray JNICALL Java_com_nanoplus_NanoPlus_nativeClassNames(JNIEnv* env, jclass, jlong handle) {
    nanoplus::Detector* det = from_handle(env, handle);
    if (!det) return nullptr;
    const std::vector<std::string>& names = det->meta().class_names;
    jobjectArray out = env->NewObjectArray(static_cast<jsize>(names.size()), env->FindClass("java/lang/String"), nullptr);
    for (size_t i = 0; i < names.size(); ++i) {
        jstring s = env->NewStringUTF(names[i].c_str());
        env->SetObjectArrayElement(out, static_cast<jsize>(i), s);
        env->DeleteLocalRef(s);
    }
    return out;
}

JNIEXPORT jfloatArray JNICALL Java_com_nanoplus_NanoPlus_nativeDetectRgba(JNIEnv* env, jclass, jlong handle, jobject rgba, jint width,
                                                                          jint height, jint row_stride) {
    nanoplus::Detector* det = from_handle(env, handle);
    if (!det) return nullptr;
    const uint8_t* pixels = static_cast<const uint8_t*>(env->GetDirectBufferAddress(rgba));
    const jlong capacity = env->GetDirectBufferCapacity(rgba);
    if (!pixels || width <= 0 || height <= 0 || row_stride < width * 4 || capacity < static_cast<jlong>(row_stride) * height) {
        throw_java(env, "java/lang/IllegalArgumentException",
                   "NanoPlus.detect: need a direct ByteBuffer of at least rowStride * height bytes of RGBA_8888 pixels, rowStride >= 4 * width");
        return nullptr;
    }
    nanoplus::ImageView image{pixels, width, height, row_stride, nanoplus::PixelFormat::RGBA};
    std::vector<nanoplus::Detection> dets;
    try {
        dets = det->detect(image);
    } catch (const std::exception& e) {
        throw_java(env, "java/lang/IllegalStateException", e.what());
        return nullptr;
    }
    std::vector<float> flat;
    flat.reserve(dets.size() * 6);
    for (const nanoplus::Detection& d : dets) {
        flat.insert(flat.end(), {d.x1, d.y1, d.x2, d.y2, d.score, static_cast<float>(d.class_id)});
    }
    jfloatArray out = env->NewFloatArray(static_cast<jsize>(flat.size()));
    env->SetFloatArrayRegion(out, 0, static_cast<jsize>(flat.size()), flat.data());
    return out;
}

}  // extern "C"
