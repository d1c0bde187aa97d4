"""Generate eval/dev2_unanswerable.jsonl: plausible questions about the dev2 corpus's subjects that it cannot answer.

The dev2 questions' own unanswerable ones mostly name something the corpus never mentions (Flatpak, WireGuard), which
the retriever's unknown-name gate refuses before the answer's decision is asked. These pair a subject the corpus
does cover (the commands of its manual pages, the Debian Administrator's Handbook, the Debian FAQ, the Node.js docs,
the Debian Edu manual, the Debian New Maintainers' Guide) with a fact or a feature the documents never state, in
words the documents use, so only the answer's decision can refuse them.
Run from the repository root: python eval/make_dev2_unanswerable.py
"""
import json
import zlib
from pathlib import Path

SUBJECT_QUESTIONS = [
    # (subject, question)
    ("man", "ls 有没有按文件作者的名字排序的选项？"),
    ("man", "cp 复制大文件时能不能限制每秒的传输速度？"),
    ("man", "gzip 压缩时怎么给压缩包设置密码？"),
    ("man", "tar 打包时怎么把文件上传到云存储？"),
    ("man", "find 能不能按照文件内容的语言来查找文件？"),
    ("man", "rm 删除的文件能从回收站恢复吗，回收站在哪个目录？"),
    ("man", "date 命令怎么显示农历日期？"),
    ("man", "hostnamectl 设置的主机名最多能保存几个历史版本？"),
    ("man", "timedatectl 能不能根据手机的位置自动切换时区？"),
    ("man", "ssh 连接时怎么用指纹识别代替密码登录？"),
    ("man", "grep 搜索时怎么自动把匹配到的文字翻译成英文？"),
    ("man", "df 显示的磁盘空间能导出成 Excel 表格吗？"),
    ("man", "sort 排序一亿行数据大概需要多少分钟？"),
    ("man", "ping 的作者是哪一年写出这个程序的？"),
    ("man", "How do I make ls show the file's owner in a different color for each user?"),
    ("man", "Can tee send its output to a printer directly?"),
    ("man", "Which option makes cp encrypt the copied files?"),
    ("man", "How much faster is gzip -1 than gzip -9 on a typical laptop?"),
    ("man", "Who is the current maintainer of the tcpdump man page translation?"),
    ("man", "How do I make journalctl send the logs to my phone?"),
    ("handbook", "Debian 管理员手册的纸质版在国内哪家书店有卖，多少钱？"),
    ("handbook", "Debian 官方推荐给中小企业的服务器品牌是哪家？"),
    ("handbook", "Falcot 公司的 IT 部门一共有多少名员工，年预算多少？"),
    ("handbook", "用 Debian 搭建的邮件服务器每天最多能发多少封邮件才不会被封？"),
    ("handbook", "Debian 的安装程序支持用人脸识别来创建第一个用户吗？"),
    ("handbook", "How much does the Debian project pay its release managers?"),
    ("handbook", "Which cloud provider hosts the official Debian package mirrors in Brazil?"),
    ("handbook", "How many copies of the Debian Administrator's Handbook have been sold?"),
    ("handbook", "What is the phone number of the Debian security hotline?"),
    ("handbook", "Does Debian offer an official paid support contract with a 4-hour response time?"),
    ("debian-faq", "Debian 每个稳定版的官方电话技术支持持续几年？"),
    ("debian-faq", "Debian 开发者每年要缴纳多少会费？"),
    ("debian-faq", "Which Debian release had the most downloads in its first week?"),
    ("debian-faq", "How many Debian developers live in Japan?"),
    ("nodejs", "Node.js 官方认证工程师考试的报名费是多少？"),
    ("nodejs", "Node.js 的 fs 模块能直接读取手机相册里的照片吗？"),
    ("nodejs", "Which company pays the salaries of the Node.js core team?"),
    ("nodejs", "How many lines of code does the Node.js http module have?"),
    ("nodejs", "What is the price of the Node.js enterprise license?"),
    ("debian-edu", "Debian Edu 在中国有多少所学校在使用？"),
    ("debian-edu", "Debian Edu 的主服务器推荐购买哪个品牌的机柜？"),
    ("debian-edu", "Debian Edu 能不能给学生的考试自动打分？"),
    ("debian-edu", "Which country's ministry of education funds the Debian Edu project?"),
    ("debian-edu", "How much does a teacher training course for Debian Edu cost?"),
    ("maint-guide", "成为 Debian 维护者之后每月能领多少补贴？"),
    ("maint-guide", "Debian 新维护者指南的作者现在在哪家公司工作？"),
    ("maint-guide", "How long does the Debian New Maintainer exam last, and is it held online?"),
    ("maint-guide", "Which IDE does the New Maintainers' Guide recommend for writing debian/rules in Chinese?"),
]


def main() -> None:
    out = Path(__file__).with_name("dev2_unanswerable.jsonl")
    lines = []
    for number, (subject, question) in enumerate(SUBJECT_QUESTIONS, 1):
        # the same split rule as the dev set: crc32 of the id
        split = "tune" if zlib.crc32(f"d2u{number:03d}".encode()) % 2 == 0 else "test"
        lines.append({"id": f"d2u{number:03d}", "question": question, "evidence": [], "source": "", "split": split,
                      "subject": subject})
    out.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), encoding="utf-8")
    print(f"{out}: {len(lines)} questions")


if __name__ == "__main__":
    main()
