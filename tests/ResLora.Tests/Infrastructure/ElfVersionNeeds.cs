using System.Buffers.Binary;
using System.Text;

namespace ResLora.Tests.Infrastructure;

/// <summary>An independent reader of ELF64 .gnu.version_r, used to check the build's native fix.</summary>
internal static class ElfVersionNeeds
{
    public static ushort? FlagsOf(byte[] b, string versionName)
    {
        var s = b.AsSpan();
        long shoff = (long)BinaryPrimitives.ReadUInt64LittleEndian(s[0x28..]);
        int shentsize = BinaryPrimitives.ReadUInt16LittleEndian(s[0x3A..]);
        int shnum = BinaryPrimitives.ReadUInt16LittleEndian(s[0x3C..]);
        for (int i = 0; i < shnum; i++)
        {
            var sh = s[(int)(shoff + i * shentsize)..];
            if (BinaryPrimitives.ReadUInt32LittleEndian(sh[4..]) != 0x6ffffffe) continue;
            int off = (int)BinaryPrimitives.ReadUInt64LittleEndian(sh[24..]);
            int link = (int)BinaryPrimitives.ReadUInt32LittleEndian(sh[40..]);
            int count = (int)BinaryPrimitives.ReadUInt32LittleEndian(sh[44..]);
            int str = (int)BinaryPrimitives.ReadUInt64LittleEndian(s[(int)(shoff + link * shentsize + 24)..]);
            int vn = off;
            for (int k = 0; k < count; k++)
            {
                int cnt = BinaryPrimitives.ReadUInt16LittleEndian(s[(vn + 2)..]);
                int aux = vn + (int)BinaryPrimitives.ReadUInt32LittleEndian(s[(vn + 8)..]);
                for (int j = 0; j < cnt; j++)
                {
                    int name = str + (int)BinaryPrimitives.ReadUInt32LittleEndian(s[(aux + 8)..]);
                    int end = s[name..].IndexOf((byte)0);
                    if (Encoding.ASCII.GetString(s.Slice(name, end)) == versionName)
                        return BinaryPrimitives.ReadUInt16LittleEndian(s[(aux + 4)..]);
                    aux += (int)BinaryPrimitives.ReadUInt32LittleEndian(s[(aux + 12)..]);
                }
                vn += (int)BinaryPrimitives.ReadUInt32LittleEndian(s[(vn + 12)..]);
            }
        }
        return null;
    }
}
