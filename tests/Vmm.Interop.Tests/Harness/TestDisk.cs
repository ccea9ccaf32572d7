using System.Security.Cryptography;
using System.Text;

namespace Vmm.Interop.Tests.Harness;

/// <summary>Disk images on the host side and the data the guest writes to them.</summary>
public static class TestDisk
{
    public const int MiB = 1024 * 1024;

    /// <summary>
    /// Creates a sparse image of <paramref name="sizeMiB"/> whose first
    /// <paramref name="prefillMiB"/> MiB hold deterministic pseudo-random bytes.
    /// </summary>
    public static string Create(string path, int sizeMiB, int prefillMiB = 16, int seed = 1)
    {
        using var fs = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        fs.SetLength((long)sizeMiB * MiB);
        var rng = new Random(seed);
        var buf = new byte[MiB];
        for (var i = 0; i < Math.Min(prefillMiB, sizeMiB); i++)
        {
            rng.NextBytes(buf);
            fs.Write(buf);
        }
        return path;
    }

    /// <summary>Writes <paramref name="data"/> at byte <paramref name="offset"/> and flushes it to the disk.</summary>
    public static void Write(string path, long offset, ReadOnlySpan<byte> data)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        fs.Position = offset;
        fs.Write(data);
        fs.Flush(flushToDisk: true);
    }

    public static byte[] Read(string path, int offsetMiB, int sizeMiB)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var buf = new byte[sizeMiB * MiB];
        fs.Position = (long)offsetMiB * MiB;
        fs.ReadExactly(buf);
        return buf;
    }

    public static string Md5(byte[] data) => Convert.ToHexStringLower(MD5.HashData(data));

    public static string Md5(string path, int offsetMiB, int sizeMiB) => Md5(Read(path, offsetMiB, sizeMiB));

    public static string Sha256(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        return Convert.ToHexStringLower(SHA256.HashData(fs));
    }

    /// <summary>
    /// The pattern the guest's /init writes for a seed: 64-byte lines, line i being
    /// <c>printf "%-63s\n" "vmmtest SEED i"</c>.
    /// </summary>
    public static byte[] Pattern(string seed, int sizeMiB)
    {
        var lines = sizeMiB * MiB / 64;
        var buf = new byte[sizeMiB * MiB];
        for (var i = 0; i < lines; i++)
        {
            var line = $"vmmtest {seed} {i}".PadRight(63) + "\n";
            Encoding.ASCII.GetBytes(line, 0, 64, buf, i * 64);
        }
        return buf;
    }
}
