using System.Buffers.Binary;
using System.Text;

namespace Vmm.Virtio.Spec;

/// <summary>File system device feature bits (virtio 1.2, 5.11.3).</summary>
public static class VirtioFsFeatures
{
    /// <summary>VIRTIO_FS_F_NOTIFICATION (0): a notification queue follows the hiprio queue.</summary>
    public const ulong NOTIFICATION = 1UL << 0;
}

/// <summary>The file system device's queues (virtio 1.2, 5.11.2), without VIRTIO_FS_F_NOTIFICATION.</summary>
public static class VirtioFs
{
    /// <summary>hiprio: FUSE_FORGET, FUSE_BATCH_FORGET and FUSE_INTERRUPT, which must not wait behind normal requests (5.11.6.2).</summary>
    public const int HiprioQueue = 0;

    /// <summary>request queues start here (notification queue not negotiated).</summary>
    public const int FirstRequestQueue = 1;
}

/// <summary>
/// struct virtio_fs_config (virtio 1.2, 5.11.4): a 36-byte tag, UTF-8, NUL-padded and not
/// NUL-terminated when it fills the field, then num_request_queues (le32, at least 1).
/// </summary>
public readonly record struct VirtioFsConfig(string Tag, uint NumRequestQueues, bool TagIsValidUtf8)
{
    public const int TagSize = 36;

    public const int Size = 40;

    public const int NumRequestQueuesOffset = 36;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Reads the config; a tag that is not UTF-8 is kept with replacement characters and flagged.</summary>
    public static VirtioFsConfig Read(ReadOnlySpan<byte> config)
    {
        if (config.Length < Size)
        {
            throw new ArgumentException($"virtio_fs_config is {Size} bytes, not {config.Length}.", nameof(config));
        }

        ReadOnlySpan<byte> tag = config[..TagSize];
        int end = tag.IndexOf((byte)0);
        tag = end < 0 ? tag : tag[..end];
        string text;
        bool valid = true;
        try
        {
            text = StrictUtf8.GetString(tag);
        }
        catch (DecoderFallbackException)
        {
            text = Encoding.UTF8.GetString(tag);
            valid = false;
        }

        return new VirtioFsConfig(text, BinaryPrimitives.ReadUInt32LittleEndian(config[NumRequestQueuesOffset..]), valid);
    }

    /// <summary>Writes the config (a device or a test fake); the tag is cut at <see cref="TagSize"/> bytes.</summary>
    public void Write(Span<byte> config)
    {
        config[..Size].Clear();
        byte[] tag = Encoding.UTF8.GetBytes(Tag);
        tag.AsSpan(0, Math.Min(tag.Length, TagSize)).CopyTo(config);
        BinaryPrimitives.WriteUInt32LittleEndian(config[NumRequestQueuesOffset..], NumRequestQueues);
    }
}
