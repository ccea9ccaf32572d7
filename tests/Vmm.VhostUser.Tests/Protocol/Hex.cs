using System.Globalization;

namespace Vmm.VhostUser.Tests.Protocol;

/// <summary>Hand-written golden bytes: "01 00 00 00 | 05 ..." with spaces and bars ignored.</summary>
internal static class Hex
{
    public static byte[] Bytes(string text)
    {
        var digits = text.Replace(" ", "").Replace("|", "").Replace("\n", "").Replace("\r", "");
        var result = new byte[digits.Length / 2];
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = byte.Parse(digits.AsSpan(i * 2, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        }

        return result;
    }
}
