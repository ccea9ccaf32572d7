using System.Globalization;

namespace Vmm.Host.Cli;

/// <summary>Sizes as users write them: 4096, 4k, 4K, 64M, 1G, 512MiB.</summary>
public static class SizeParser
{
    public static bool TryParse(string text, out ulong bytes)
    {
        bytes = 0;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        string s = text.Trim();
        ulong multiplier = 1;
        string[] suffixes = ["KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB", "TB", "K", "M", "G", "T", "k", "m", "g", "t", "B", "b"];
        foreach (string suffix in suffixes)
        {
            if (s.EndsWith(suffix, StringComparison.Ordinal))
            {
                multiplier = char.ToUpperInvariant(suffix[0]) switch
                {
                    'K' => 1UL << 10,
                    'M' => 1UL << 20,
                    'G' => 1UL << 30,
                    'T' => 1UL << 40,
                    _ => 1,
                };
                s = s[..^suffix.Length];
                break;
            }
        }

        if (!ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out ulong value))
        {
            return false;
        }

        try
        {
            bytes = checked(value * multiplier);
            return true;
        }
        catch (OverflowException)
        {
            return false;
        }
    }

    public static ulong Parse(string text, string what) =>
        TryParse(text, out ulong bytes) ? bytes : throw new UsageException($"{what} '{text}' is not a size (examples: 4096, 4k, 64M, 1G).");
}
